"""fatdispatch type-checks under mypy --strict (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:]


def test_value_types_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The value types are dataclasses to mypy: a misspelt field or a wrong type fails type checking."""
    pytest.importorskip("mypy")
    bad = tmp_path / "bad.py"
    bad.write_text("from fatdispatch._records import Variant\n"
                   "Variant(nmae='typo', kind=3)\n")
    good = tmp_path / "good.py"
    good.write_text("from fatdispatch._records import Variant\n"
                    "v = Variant(name='b', kind='cpu', file='b/_core', arch='x86_64', priority=0,\n"
                    "            features=frozenset(), x86_64_level=1, cuda=None, properties=())\n"
                    "print(v.name.upper())\n")
    env_args = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
    import os

    env = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    p = subprocess.run([*env_args, str(bad)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 1 and 'Unexpected keyword argument "nmae"' in p.stdout, p.stdout
    assert 'incompatible type "int"' in p.stdout, p.stdout
    p = subprocess.run([*env_args, str(good)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout
