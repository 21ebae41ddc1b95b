"""Building and installing a fat package when fatdispatch is on no index (the README's "Without fatdispatch on an
index"): python -m build with PIP_FIND_LINKS, uv build with UV_FIND_LINKS, uv pip install ./pkg with
--find-links; and the build backend failing loudly where the plugin is missing instead of shipping a pure wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import EXAMPLE, run, site_packages

pytestmark = pytest.mark.slow

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def project_copy(where: Path) -> Path:
    """fatdemo's sources in a fresh folder (no build/ or egg-info left behind in the checkout)."""
    dest = where / "fatdemo"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("build", "*.egg-info", "dist", "__pycache__"))
    return dest


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with setuptools, wheel and build but no fatdispatch; its python."""
    where = tmp_path_factory.mktemp("bare") / "v"
    run([sys.executable, "-m", "venv", "--without-pip", str(where)])
    py = where / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--disable-pip-version-check",
         "setuptools>=77", "wheel", "build>=1.2", "pip"])
    return py


def build_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FATDISPATCH_", "PIP_FIND_LINKS", "UV_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env["FATDISPATCH_SKIP_CUDA"] = "1"  # the CPU builds are enough to see the plugin ran
    env.update(extra or {})
    return env


def has_fat_module(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as zf:
        return "fatdemo/_core.variants/manifest.json" in zf.namelist()


def test_no_isolation_build_without_fatdispatch_fails_loudly(bare_venv: Path, tmp_path: Path) -> None:
    """`python -m build -n -x` where fatdispatch is missing: no wheel, and the message names fatdispatch (with
    setuptools.build_meta as the backend this made a py3-none-any wheel with no extension)."""
    src = project_copy(tmp_path)
    p = subprocess.run([str(bare_venv), "-m", "build", "-n", "-x", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, env=build_env(), cwd=tmp_path)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "fatdispatch.build.backend" in out and "No module named 'fatdispatch'" in out, out[-2000:]
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_build_with_fatdispatch_only_on_pythonpath_names_the_missing_plugin(bare_venv: Path, tmp_path: Path,
                                                                           wheels: dict[str, Path]) -> None:
    """fatdispatch importable (its wheel unpacked into a PYTHONPATH folder, no dist-info) but not installed:
    setuptools has no entry point to run its plugin; the backend says so instead of making a pure wheel."""
    vendored = tmp_path / "vendored"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(vendored),
         str(wheels["fatdispatch"])])
    for info in vendored.glob("fatdispatch-*.dist-info"):
        shutil.rmtree(info)
    src = project_copy(tmp_path)
    p = subprocess.run([str(bare_venv), "-m", "build", "-n", "-x", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, env=build_env({"PYTHONPATH": str(vendored)}), cwd=tmp_path)
    assert p.returncode != 0
    assert "not installed as a distribution" in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_backend_refuses_a_wheel_without_the_declared_builds(wheels: dict[str, Path], tmp_path: Path) -> None:
    from fatdispatch.build.backend import missing_in_wheel

    assert missing_in_wheel(str(wheels["fatdemo"]), ["fatdemo._core"]) == []
    assert missing_in_wheel(str(wheels["fatdispatch"]), ["fatdemo._core"]) == ["fatdemo._core"]


def test_python_m_build_with_pip_find_links(bare_venv: Path, wheels: dict[str, Path], tmp_path: Path) -> None:
    """Isolated `python -m build`: the build requirement fatdispatch comes from PIP_FIND_LINKS."""
    links = tmp_path / "links"
    links.mkdir()
    shutil.copy(wheels["fatdispatch"], links)
    src = project_copy(tmp_path)
    run([str(bare_venv), "-m", "build", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
        env=build_env({"PIP_FIND_LINKS": str(links)}), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("fatdemo-*.whl")
    assert has_fat_module(wheel) and "-py3-none-any" not in wheel.name


@pytest.mark.skipif(UV is None, reason="uv missing (pip install 'uv>=0.13,<0.14')")
def test_uv_build_and_uv_pip_install_from_find_links(wheels: dict[str, Path], tmp_path: Path,
                                                     clean_env: dict[str, str]) -> None:
    """`UV_FIND_LINKS=... uv build --wheel` and `uv pip install --find-links ... ./fatdemo` into a fresh venv.
    --no-cache: uv caches a find-links wheel by its name, so a rebuilt fatdispatch of the same version would
    otherwise be served stale from ~/.cache/uv."""
    assert UV is not None
    links = tmp_path / "links"
    links.mkdir()
    shutil.copy(wheels["fatdispatch"], links)
    src = project_copy(tmp_path)
    run([UV, "build", "-q", "--no-cache", "--wheel", "-o", str(tmp_path / "dist"), str(src)],
        env=build_env({"UV_FIND_LINKS": str(links)}), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("fatdemo-*.whl")
    assert has_fat_module(wheel)
    run([UV, "venv", "-q", "--python", sys.executable, str(tmp_path / "v")], env=build_env())
    py = tmp_path / "v" / "bin" / "python"
    run([UV, "pip", "install", "-q", "--no-cache", "--python", str(py), "--find-links", str(links), str(src)],
        env=build_env(), cwd=tmp_path)
    assert (site_packages(py) / "fatdemo" / "_core.variants" / "manifest.json").is_file()
    out = run([str(py), "-c", "import fatdemo; print(fatdemo.variant())"], env=clean_env, cwd="/").stdout.strip()
    assert out in ("baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4")
