"""Packagers' commands: ``python -m fatdispatch test-variants -- COMMAND...``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

from . import fat_modules, hardware
from ._runtime import NO_GPU_PROBE, Hardware, Manifest, read_manifest, select

QEMU_MODELS = {1: "qemu64", 2: "Nehalem", 3: "Haswell", 4: None}  # qemu's TCG has no AVX-512


def _run_once(cmd: list[str], env: Mapping[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    rc = subprocess.run(cmd, env=dict(env)).returncode
    seconds = time.perf_counter() - started
    if rc == 0:
        return "passed", seconds
    return (f"FAILED (exit {rc})" if rc > 0 else f"FAILED (signal {-rc})"), seconds


def test_variants(command: Sequence[str], modules: Sequence[str] = (), use_qemu: bool = False,
                  env: Mapping[str, str] | None = None, paths: list[str] | None = None) -> int:
    """Run ``command`` once per build of each fat module that can run here (forcing it), and, with
    ``use_qemu``, once per older CPU build under ``qemu-x86_64`` with the matching CPU model."""
    env = dict(os.environ if env is None else env)
    env.pop("FATDISPATCH_FORCE", None)
    found = fat_modules(paths)
    names = list(modules) or sorted(found)
    if not names:
        print("test-variants: no fat modules found on sys.path", file=sys.stderr)
        return 2
    missing = [m for m in names if m not in found]
    if missing:
        print(f"test-variants: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    hw = hardware(env)
    qemu = shutil.which("qemu-x86_64") if use_qemu else None
    if use_qemu and qemu is None:
        print("test-variants: --qemu needs qemu-x86_64 (Debian/Ubuntu: apt-get install qemu-user)", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, str, str, float]] = []
    failed = 0
    for mod in names:
        sel = select(read_manifest(found[mod]), hw, env)
        for cand in sel.candidates:
            v = cand.variant
            prefix: list[str] = []
            how = "native"
            if not cand.usable:
                model = QEMU_MODELS.get(v.x86_64_level or 0) if v.kind == "cpu" and v.arch == "x86_64" else None
                if qemu and model and (hw.cpu.x86_64_level or 0) >= (v.x86_64_level or 0):
                    prefix, how = [qemu, "-cpu", model], f"qemu -cpu {model}"
                else:
                    rows.append((mod, v.name, "-", f"skipped: {cand.reason}", 0.0))
                    continue
            run_env = dict(env, FATDISPATCH_FORCE=f"{mod}:{v.name}")
            runs = [(prefix, how)]
            model = QEMU_MODELS.get(v.x86_64_level or 0)
            if (qemu and model and cand.usable and v.kind == "cpu" and v.arch == "x86_64"
                    and (v.x86_64_level or 0) < (hw.cpu.x86_64_level or 0)):
                runs.append(([qemu, "-cpu", model], f"qemu -cpu {model}"))  # also on its own, older CPU model
            for run_prefix, run_how in runs:
                outcome, seconds = _run_once(run_prefix + list(command), run_env)
                failed += outcome != "passed"
                rows.append((mod, v.name, run_how, outcome, seconds))
    width = max(len(f"{m}:{b}") for m, b, *_ in rows)
    print(f"\n{'build':<{width}}  {'ran':<18} {'outcome':<10} seconds")
    for mod, build, how, outcome, seconds in rows:
        print(f"{mod + ':' + build:<{width}}  {how:<18} {outcome:<10} {seconds:7.2f}" if how != "-"
              else f"{mod + ':' + build:<{width}}  {'-':<18} {outcome}")
    ran = sum(1 for r in rows if r[2] != "-")
    print(f"test-variants: {ran - failed} passed, {failed} failed")
    return 1 if failed else 0



# ---------------------------------------------------------------- aarch64 builds under qemu-aarch64 CPU models


def qemu_aarch64_models() -> list[tuple[str, int, int]]:
    """qemu's aarch64 CPU models, weakest first, with the (AT_HWCAP, AT_HWCAP2) a process sees under each
    (``_data/qemu_aarch64.json``, recorded under qemu 10)."""
    import json

    with open(os.path.join(os.path.dirname(__file__), "_data", "qemu_aarch64.json"), encoding="utf-8") as f:
        data = json.load(f)
    return [(m, *data["models"][m]) for m in data["order"]]


def _qemu_version(qemu: str) -> tuple[int, int] | None:
    import re

    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _words(h1: int, h2: int) -> "Callable[[], tuple[int, int]]":
    return lambda: (h1, h2)


def _no_cpuinfo() -> None:
    return None


def aarch64_qemu_plan(manifest: Manifest, env: Mapping[str, str],
                      models: Sequence[tuple[str, int, int]] | None = None) -> list[tuple[str, str | None, str]]:
    """For each aarch64 CPU build of ``manifest``: (build, qemu model or None, why) (pure).

    The model is the weakest one whose pick is that build (the CPU it was made for), else the weakest that can
    run it at all; ``None`` where no model can (the reason says what is missing everywhere).
    """
    from ._aarch64 import probe_cpu_record

    judged = []
    for name, h1, h2 in models if models is not None else qemu_aarch64_models():
        cpu = probe_cpu_record(_words(h1, h2), _no_cpuinfo)
        judged.append((name, select(manifest, Hardware(cpu=cpu, gpu=NO_GPU_PROBE), env)))
    plan: list[tuple[str, str | None, str]] = []
    for v in manifest.variants:
        if v.arch != "aarch64" or v.kind != "cpu":
            continue
        picked = [m for m, sel in judged if sel.order[:1] == (v.name,)]
        usable = [m for m, sel in judged if v.name in sel.order]
        if picked:
            plan.append((v.name, picked[0], f"the pick on {picked[0]}"))
        elif usable:
            plan.append((v.name, usable[0], f"runs on {usable[0]} (no model picks it)"))
        else:
            why = next(c.reason for c in judged[-1][1].candidates if c.variant.name == v.name) if judged else "none"
            plan.append((v.name, None, f"no qemu model runs it: {why}"))
    return plan


def test_variants_aarch64(command: Sequence[str], qemu: str, sysroot: str | None = None,
                          modules: Sequence[str] = (), env: Mapping[str, str] | None = None,
                          paths: list[str] | None = None) -> int:
    """Run ``command`` once per aarch64 build of each fat module, forced, under ``qemu -cpu MODEL`` with the
    model :func:`aarch64_qemu_plan` gives it (``-L sysroot`` when the command is an emulated interpreter on
    another architecture).  Prints a table like :func:`test_variants`; exit status 1 on any failure."""
    env = dict(os.environ if env is None else env)
    env.pop("FATDISPATCH_FORCE", None)
    found = fat_modules(paths)
    names = list(modules) or sorted(found)
    missing = [m for m in names if m not in found]
    if not names or missing:
        print(f"test-variants: not installed: {', '.join(missing) or 'no fat modules found'}", file=sys.stderr)
        return 2
    version = _qemu_version(qemu)
    if version is None or version < (10, 0):
        print(f"test-variants: WARNING: {qemu} is qemu {'.'.join(map(str, version or ())) or '(version unknown)'}; "
              "the models were recorded under qemu 10 (older ones lack neoverse-v1/n2 and may differ)", file=sys.stderr)
    prefix = [qemu] + (["-L", sysroot] if sysroot else [])
    rows: list[tuple[str, str, str, str, float]] = []
    failed = 0
    for mod in names:
        for build, model, why in aarch64_qemu_plan(read_manifest(found[mod]), env):
            if model is None:
                rows.append((mod, build, "-", f"skipped: {why}", 0.0))
                continue
            outcome, seconds = _run_once([*prefix, "-cpu", model, *command], dict(env, FATDISPATCH_FORCE=f"{mod}:{build}"))
            failed += outcome != "passed"
            rows.append((mod, build, f"qemu -cpu {model}", outcome, seconds))
    if not rows:
        print("test-variants: no aarch64 builds in " + ", ".join(names), file=sys.stderr)
        return 2
    width = max(len(f"{m}:{b}") for m, b, *_ in rows)
    print(f"\n{'build':<{width}}  {'ran':<22} {'outcome':<10} seconds")
    for mod, build, how, outcome, seconds in rows:
        print(f"{mod + ':' + build:<{width}}  {how:<22} {outcome:<10} {seconds:7.2f}" if how != "-"
              else f"{mod + ':' + build:<{width}}  {'-':<22} {outcome}")
    ran = sum(1 for r in rows if r[2] != "-")
    print(f"test-variants: {ran - failed} passed, {failed} failed (aarch64 builds under qemu)")
    return 1 if failed else 0
