"""Emulated older CPUs (Debian's qemu-user): each CPU build is picked where it should be, runs the example's
tests, and nothing dies with a signal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import EXAMPLE, qemu

pytestmark = [pytest.mark.qemu, pytest.mark.slow,
              pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")]

EXAMPLE_TESTS = EXAMPLE / "tests" / "test_fatdemo.py"
MODELS = [("qemu64", "baseline", "swar"), ("Nehalem", "x86-64-v2", "popcnt"), ("Haswell", "x86-64-v3", "avx2-vpshufb")]


def emulate(model: str, py: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([qemu() or "qemu-x86_64", "-cpu", model, str(py), *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd="/")


@pytest.mark.parametrize("model,variant,kernel", MODELS)
def test_pick_and_example_tests_under_emulation(demo_venv: Path, clean_env: dict[str, str], model: str,
                                                variant: str, kernel: str) -> None:
    p = emulate(model, demo_venv, [str(EXAMPLE_TESTS)], clean_env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"fatdemo {variant} ({kernel}): 6 passed, 0 failed" in p.stdout


@pytest.mark.parametrize("model,variant,kernel", MODELS)
def test_forced_build_passes_example_tests_on_its_cpu(demo_venv: Path, clean_env: dict[str, str], model: str,
                                                      variant: str, kernel: str) -> None:
    p = emulate(model, demo_venv, [str(EXAMPLE_TESTS)], dict(clean_env, FATDISPATCH_FORCE=variant))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"fatdemo {variant} ({kernel})" in p.stdout


def test_forcing_v3_on_nehalem_is_a_clean_import_error(demo_venv: Path, clean_env: dict[str, str]) -> None:
    p = emulate("Nehalem", demo_venv, ["-c", "import fatdemo"], dict(clean_env, FATDISPATCH_FORCE="x86-64-v3"))
    assert p.returncode == 1, (p.returncode, p.stderr)  # an exception, not a signal (negative return code)
    last = p.stderr.strip().splitlines()[-1]
    assert "NoUsableBuildError" in last and "cannot run it" in last and "avx2" in last


def test_unsafe_force_really_crashes_which_is_why_it_is_opt_in(demo_venv: Path, clean_env: dict[str, str]) -> None:
    env = dict(clean_env, FATDISPATCH_FORCE="x86-64-v3", FATDISPATCH_UNSAFE_FORCE="1")
    code = "import fatdemo; fatdemo.hamming(bytes(4096), bytes(4096))"
    p = emulate("Nehalem", demo_venv, ["-c", code], env)
    assert p.returncode < 0 or p.returncode == 132 or "Illegal" in p.stderr, (p.returncode, p.stderr[-500:])


@pytest.mark.parametrize("model,level", [("qemu64", 1), ("Nehalem", 2), ("Haswell", 3)])
def test_report_under_emulation(demo_venv: Path, clean_env: dict[str, str], model: str, level: int) -> None:
    import json
    p = emulate(model, demo_venv, ["-m", "fatdispatch", "report", "--json"], clean_env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["hardware"]["cpu"]["x86_64_level"] == level


def test_test_variants_command(demo_venv: Path, clean_env: dict[str, str]) -> None:
    """The packagers' command: every runnable build natively, the older ones under qemu, a table, exit status."""
    p = subprocess.run([str(demo_venv), "-m", "fatdispatch", "test-variants", "--qemu", "--", str(demo_venv),
                        str(EXAMPLE_TESTS)], env=clean_env, capture_output=True, text=True, timeout=900, cwd="/")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "qemu -cpu Nehalem" in p.stdout and "qemu -cpu qemu64" in p.stdout
    assert "skipped: no usable NVIDIA GPU" in p.stdout or "cuda" not in p.stdout
    assert "0 failed" in p.stdout.splitlines()[-1]
    bad = subprocess.run([str(demo_venv), "-m", "fatdispatch", "test-variants", "--", str(demo_venv), "-c",
                          "import fatdemo, sys; sys.exit(fatdemo.variant() == 'baseline')"],
                         env=clean_env, capture_output=True, text=True, timeout=300, cwd="/")
    assert bad.returncode == 1 and "FAILED (exit 1)" in bad.stdout
