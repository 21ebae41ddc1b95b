"""`split`'s variant wheels installed by a real variant-aware installer: uv 0.13.x with its wheel-variants preview,
from a find-links folder, into fresh environments. uv picks the best build for this machine (its own built-in
x86-64 and nvidia providers), the nvidia build its NV_VARIANT_PROVIDER_FORCE_* overrides call for, and the fat
wheel where no variant fits; pip, which knows no variants, takes the fat wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run, site_packages

pytestmark = pytest.mark.slow

LEVEL_BUILD = {1: "baseline", 2: "x86-64-v2", 3: "x86-64-v3", 4: "x86-64-v4"}
ALL_BUILDS = {"baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm90",
              "cuda-ptx75"}


def uv_binary() -> str | None:
    """uv 0.13.x (the release line whose wheel-variant preview this layout follows), or None."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        return None
    out = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout
    return uv if re.match(r"uv 0\.13\.", out) else None


UV = uv_binary()
needs_uv = pytest.mark.skipif(UV is None, reason="uv 0.13.x missing (pip install 'uv>=0.13,<0.14')")


@pytest.fixture(scope="module")
def find_links(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """split's output (variant wheels, index, fat wheel) plus fatdispatch's wheel: a find-links folder."""
    out = tmp_path_factory.mktemp("find-links")
    run([sys.executable, "-m", "fatdispatch", "split", str(wheels["fatdemo"]), "-o", str(out)])
    shutil.copy(wheels["fatdispatch"], out)
    return out


def uv_install(where: Path, links: Path, env: dict[str, str], preview: bool = True) -> Path:
    """A fresh uv venv at ``where`` with fatdemo installed by uv from ``links`` alone (no index); its python."""
    assert UV is not None
    env = {k: v for k, v in env.items() if not k.startswith(("UV_", "NV_VARIANT_PROVIDER_"))} | env_extra(env)
    run([UV, "venv", "-q", "--python", sys.executable, str(where)], env=env)
    py = where / "bin" / "python"
    args = [UV, "pip", "install", "-q", "--python", str(py), "--no-index", "--find-links", str(links), "--no-cache"]
    if preview:
        args += ["--preview-features", "wheel-variants"]
    run([*args, "fatdemo"], env=env)
    return py


def env_extra(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("NV_VARIANT_PROVIDER_FORCE_")}


def installed_builds(py: Path) -> set[str]:
    folder = site_packages(py) / "fatdemo" / "_core.variants"
    return {p.name for p in folder.iterdir() if p.is_dir()}


def host_build() -> str:
    import _fatdispatch

    return LEVEL_BUILD[int(_fatdispatch.cpu()["x86_64_level"])]


@needs_uv
def test_uv_installs_only_the_best_cpu_build_and_imports_it(find_links: Path, tmp_path: Path,
                                                            clean_env: dict[str, str]) -> None:
    best = host_build()  # fatdispatch's own probe; uv's x86-64 provider must agree
    py = uv_install(tmp_path / "v", find_links, clean_env)
    assert installed_builds(py) == {best}
    out = run([str(py), "-c", "import fatdemo, fatdispatch; print(fatdemo.variant(), "
               "fatdispatch.loaded('fatdemo._core').variant)"], env=clean_env, cwd="/").stdout.split()
    assert out == [best, best]


@needs_uv
@pytest.mark.parametrize("driver,sm,build", [("13.0", "9.0", "cuda-sm90"), ("13.0", "8.9", "cuda-sm86"),
                                             ("13.0", "7.5", "cuda-sm75"), ("12.8", "9.0", None)])
def test_uv_nvidia_overrides_pick_the_matching_cuda_build(find_links: Path, tmp_path: Path, clean_env: dict[str, str],
                                                          driver: str, sm: str, build: str | None) -> None:
    """sm_86 SASS runs on 8.9; a 12.8 driver runs none of the CUDA 13 builds, so the best CPU build comes."""
    env = dict(clean_env, NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION=driver, NV_VARIANT_PROVIDER_FORCE_SM_ARCH=sm)
    py = uv_install(tmp_path / "v", find_links, env)
    assert installed_builds(py) == {build or host_build()}


@needs_uv
def test_uv_takes_the_fat_wheel_where_no_variant_fits_or_without_the_preview(find_links: Path, tmp_path: Path,
                                                                             clean_env: dict[str, str]) -> None:
    only_cuda = tmp_path / "only-cuda"
    only_cuda.mkdir()
    for f in find_links.iterdir():
        if not re.search(r"-(baseline|x86_64_v\d)\.whl$", f.name):
            shutil.copy(f, only_cuda)
    py = uv_install(tmp_path / "v1", only_cuda, clean_env)  # no GPU here, no CPU variant: the fat wheel
    assert installed_builds(py) == ALL_BUILDS
    py = uv_install(tmp_path / "v2", find_links, clean_env, preview=False)
    assert installed_builds(py) == ALL_BUILDS
    assert run([str(py), "-c", "import fatdemo; print(fatdemo.variant())"], env=clean_env,
               cwd="/").stdout.strip() == host_build()


def test_pip_installs_the_fat_wheel(find_links: Path, tmp_path: Path, clean_env: dict[str, str]) -> None:
    run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")])
    py = tmp_path / "v" / "bin" / "python"
    env = {k: v for k, v in clean_env.items() if not k.startswith("PIP_")}
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--find-links",
         str(find_links), "fatdemo"], env=env)
    assert installed_builds(py) == ALL_BUILDS
    assert run([str(py), "-c", "import fatdemo; print(fatdemo.variant())"], env=clean_env,
               cwd="/").stdout.strip() == host_build()


def test_split_refuses_a_label_installers_reject() -> None:
    from fatdispatch._errors import FatDispatchError
    from fatdispatch.build._wheel import check_label, variant_label

    check_label(variant_label("cuda-ptx75"), "cuda-ptx75")
    for bad in ("cuda-sm86-sm89-sm90", "Null", "sm+86"):
        with pytest.raises(FatDispatchError, match="installers refuse"):
            check_label(variant_label(bad), bad)


@needs_uv
def test_a_symlinked_uv_install_loads_and_its_pick_is_cached(wheels: dict[str, Path], tmp_path: Path,
                                                               clean_env: dict[str, str]) -> None:
    """``uv pip install --link-mode=symlink``: every file of the package is a symlink into uv's cache (before:
    every build was refused as 'outside' the package while ``report`` said it picks one). The builds lie beside
    the real manifest, so they load, from the pick cache too; ``report`` shows the same pick and refuses nothing."""
    assert UV is not None
    env = {k: v for k, v in clean_env.items() if not k.startswith("UV_")}
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    run([UV, "venv", "-q", "--python", sys.executable, str(tmp_path / "v")], env=env)
    py = tmp_path / "v" / "bin" / "python"
    run([UV, "pip", "install", "-q", "--python", str(py), "--no-index", "--link-mode=symlink",
         str(wheels["fatdispatch"]), str(wheels["fatdemo"])], env=env)
    so = next((site_packages(py) / "fatdemo" / "_core.variants" / host_build()).iterdir())
    assert so.is_symlink() and (site_packages(py) / "fatdemo" / "_core.variants" / "manifest.json").is_symlink()
    code = ("import json, sys, fatdemo\nprint(json.dumps([fatdemo.variant(), 'fatdispatch' not in sys.modules, "
            "fatdemo.hamming(b'\\x0f' * 8, b'\\xf0' * 8)]))")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = run([str(py), "-c", code], env=env, cwd="/").stdout.strip()
    again = run([str(py), "-c", code], env=env, cwd="/").stdout.strip()
    assert first == f'["{host_build()}", false, 64]' and again == f'["{host_build()}", true, 64]'
    report = run([str(py), "-m", "fatdispatch", "report"], env=env, cwd="/").stdout
    assert f"fatdemo._core: picks {host_build()}" in report and "refused at load" not in report
