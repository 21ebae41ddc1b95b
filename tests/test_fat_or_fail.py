"""A build is fat or it fails: a project whose build_ext calls setuptools' base class directly (as bottleneck
1.6.0's does) still gets every build and the manifest, or the build stops with a message saying what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import FIXTURES, run

pytestmark = pytest.mark.slow
PKG = FIXTURES / "bypasspkg"


def copy(tmp_path: Path) -> Path:
    work = tmp_path / "bypasspkg"
    shutil.copytree(PKG, work, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    return work


def test_setuptools_subclass_comes_out_fat(tmp_path: Path, clean_env: dict[str, str]) -> None:
    work = copy(tmp_path)
    env = dict(clean_env, BYPASS_MODE="setuptools", PIP_NO_INDEX="1")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "d"),
         str(work)], env=env)
    wheel = next((tmp_path / "d").glob("bypasspkg-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("bypasspkg/_core.variants/manifest.json"))
        zf.extractall(tmp_path / "site")
    assert [v["name"] for v in manifest["variants"]] == ["baseline", "x86-64-v2"]
    assert not [n for n in names if n.startswith("bypasspkg/_core.cpython")]  # no plain build
    code = "import bypasspkg._core as c; print(c.seen(), c.__fatdispatch_variant__)"
    p = run([sys.executable, "-c", code], env=dict(clean_env, PYTHONPATH=str(tmp_path / "site")), cwd="/")
    assert p.stdout.split() == ["True", "x86-64-v2"]  # the project's own build_extensions step still ran


def build(work: Path, mode: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "setup.py", "-q", "build"], cwd=work, env=dict(env, BYPASS_MODE=mode),
                          capture_output=True, text=True)


def test_subclass_of_ours_calling_setuptools_directly_comes_out_fat(tmp_path: Path, clean_env: dict[str, str]) -> None:
    work = copy(tmp_path)
    p = build(work, "ours", clean_env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reached through setuptools' build_extensions" in p.stdout
    assert len(list((work / "build").glob("lib*/bypasspkg/_core.variants/*/_core*.so"))) == 2


def test_build_ext_that_skips_every_fat_step_fails_loudly(tmp_path: Path, clean_env: dict[str, str]) -> None:
    work = copy(tmp_path)
    p = build(work, "broken", clean_env)
    assert p.returncode != 0
    assert "finished without the fat builds and manifest" in p.stderr
    assert "Derive your build_ext from fatdispatch.build.build_ext" in p.stderr
