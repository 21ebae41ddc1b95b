"""test-variants as packagers run it: the plan (pure), the command resolved like a shell, CPU models probed,
a dependency that cannot run on a model skipped with a line, and the README's command passing as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import demo_manifest, machine, qemu
from fatdispatch._manifest import parse_manifest
from fatdispatch._select import select
from fatdispatch._toolbox import plan_runs, resolve_command


def four_modules() -> dict:
    man = demo_manifest()
    raw = {"schema": 1, "variants": [
        {"name": v.name, "kind": v.kind, "file": v.file, "arch": v.arch, "priority": v.priority,
         "requires": dict({"features": sorted(v.features)}, **({"x86_64_level": v.x86_64_level}
                                                                if v.x86_64_level else {}),
                          **({"cuda": {"sass": list(v.cuda.sass), "ptx": list(v.cuda.ptx),
                                       "runtime": list(v.cuda.runtime)}} if v.cuda else {}))}
        for v in man.variants]}
    return {f"pkg._m{i}": parse_manifest(dict(raw, module=f"pkg._m{i}"), "<t>") for i in range(4)}


def usable_on(hw: object, mans: dict) -> dict:
    return {m: {c.variant.name: ("" if c.usable else c.reason) for c in select(man, hw, {}).candidates}
            for m, man in mans.items()}


def test_plan_forces_modules_together_and_runs_each_build_once() -> None:
    mans = four_modules()
    hw = machine()  # a recorded x86-64-v4 machine without a GPU
    plan = plan_runs(usable_on(hw, mans), mans, {"qemu64": 1, "Nehalem": 2, "Haswell": 3}, 4)
    runs = [(r.label, r.model) for r in plan.runs]
    assert runs == [("x86-64-v4", None), ("baseline", "qemu64"), ("x86-64-v2", "Nehalem"),
                    ("x86-64-v3", "Haswell")]  # 4 runs; one per module and build was 28
    assert plan.runs[1].force_value == ",".join(f"pkg._m{i}:baseline" for i in range(4))
    assert all("NVIDIA" in why for label, why in plan.skipped)
    no_qemu = plan_runs(usable_on(hw, mans), mans, {}, 4)
    assert [r.label for r in no_qemu.runs] == ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    skipped_model = plan_runs(usable_on(hw, mans), mans, {"Nehalem": 2, "Haswell": 3}, 4)  # qemu64 skipped
    assert [(r.label, r.model) for r in skipped_model.runs][:2] == [("baseline", None), ("x86-64-v4", None)]


def test_commands_are_resolved_like_a_shell(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytests"
    tool.parent.mkdir()
    py = Path(sys.executable)
    tool.write_text(f"#!/usr/bin/env {py.name} -u\nprint('hi')\n")
    tool.chmod(0o755)
    env = {"PATH": f"{tool.parent}{os.pathsep}{py.parent}{os.pathsep}{os.environ['PATH']}"}
    got = resolve_command(["mytests", "-x"], env)
    assert got == [str(py), "-u", str(tool), "-x"]
    assert resolve_command([py.name, "-c", "1"], env) == [str(py), "-c", "1"]
    with pytest.raises(FileNotFoundError, match="no-such-tool: command not found"):
        resolve_command(["no-such-tool"], env)


QUICK_TEST = '''
import os, fatdemo

def test_forced_build_is_bound():
    want = os.environ.get("FATDISPATCH_FORCE", "").split(":")[-1]
    assert not want or fatdemo.variant() == want
    assert fatdemo.hamming(b"\\xff" * 99, bytes(99)) == 792 and fatdemo.build_info()["variant"] == fatdemo.variant()
'''


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_readme_command_as_written(wheels: dict[str, Path], tmp_path: Path, clean_env: dict[str, str]) -> None:
    """`python -m fatdispatch test-variants --qemu -- python -m pytest tests`, with `python` found on PATH, and
    a dependency of fatdemo that refuses CPUs below x86-64-v2 (as NumPy 2.4 does): qemu64 is skipped with a
    line, the baseline then runs natively, and everything passes."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheels["fatdemo"]) as zf:
        zf.extractall(site)
    meta = next(site.glob("fatdemo-*.dist-info")) / "METADATA"
    meta.write_text(meta.read_text() + "Requires-Dist: needsv2\n")
    (site / "needsv2.py").write_text(
        "import _fatdispatch\nif (_fatdispatch.cpu()['x86_64_level'] or 0) < 2:\n"
        "    raise ImportError('needsv2 needs an x86-64-v2 CPU')\n")
    info = site / "needsv2-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: needsv2\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("needsv2\n")
    (info / "RECORD").write_text("needsv2.py,,\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_quick.py").write_text(QUICK_TEST)
    env = dict(clean_env, PYTHONPATH=str(site), PATH=f"{Path(sys.executable).parent}{os.pathsep}{clean_env['PATH']}")
    p = subprocess.run("python -m fatdispatch test-variants --qemu -- python -m pytest -q -p no:cacheprovider tests",
                       shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-2000:]
    assert "qemu -cpu qemu64: skipped: `import pytest, needsv2` fails (exit 1) on this CPU model" in out
    assert "needsv2 needs an x86-64-v2 CPU" in out
    rows = [line.split() for line in out.splitlines()
            if line.split()[1:2] in (["native"], ["qemu"]) and line.split()[-1].replace(".", "").isdigit()]
    assert ["baseline", "native", "passed"] == rows[[r[0] for r in rows].index("baseline")][:3]
    assert any(r[:4] == ["x86-64-v2", "qemu", "-cpu", "Nehalem"] for r in rows), rows
    assert len(rows) == len({r[0] for r in rows}) <= 4  # no build runs twice
    assert "audit: 9 builds, 0 instructions beyond their manifest" in out


@pytest.mark.qemu
@pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")
def test_probe_names_a_dependency_that_dies_on_a_model(clean_env: dict[str, str]) -> None:
    """NumPy 2.4 is built for x86-64-v2: under qemu64 its import dies with SIGILL, and the probe says so."""
    np = pytest.importorskip("numpy", reason="numpy missing")
    from fatdispatch._toolbox import probe_model

    level, why = probe_model(qemu() or "qemu-x86_64", "qemu64", sys.executable, ["numpy"], clean_env)
    assert level == 1
    if not why:
        pytest.skip(f"numpy {np.__version__} imports on qemu64 (built for x86-64-v1)")
    assert why.startswith("`import numpy` dies with SIGILL on this CPU model"), why
    assert probe_model(qemu() or "qemu-x86_64", "Nehalem", sys.executable, ["numpy"], clean_env) == (2, "")
    level, why = probe_model(qemu() or "qemu-x86_64", "no-such-cpu", sys.executable, [], clean_env)
    assert level == 0 and "qemu cannot run Python as CPU model 'no-such-cpu'" in why


def test_audit_of_the_installed_fat_modules(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """`python -m fatdispatch audit` with no argument audits what is importable (the cibuildwheel test step)."""
    pytest.importorskip("iced_x86", reason="iced-x86 missing")
    import test_audit

    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    folder = tmp_path / "site" / "auditpkg" / "_core.variants"
    so = test_audit.compile_so(tmp_path / "m.so", [test_audit.AUDIT / "ctor.c"], ["-march=x86-64"])
    test_audit.fat_package(tmp_path / "site", {"baseline": so})
    p = subprocess.run([sys.executable, "-m", "fatdispatch", "audit", "--json"], capture_output=True, text=True,
                       env=dict(clean_env, PYTHONPATH=str(tmp_path / "site")), cwd="/")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    import json

    mods = {m["module"]: m for m in json.loads(p.stdout)["modules"]}
    assert mods["auditpkg._core"]["folder"] == str(folder) and mods["auditpkg._core"]["builds"][0]["instructions"] > 0
