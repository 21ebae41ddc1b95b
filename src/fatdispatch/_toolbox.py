"""Packagers' commands: ``python -m fatdispatch test-variants -- COMMAND...``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Mapping, Sequence

from . import fat_modules, hardware
from ._frozen import qemu_prefix
from ._runtime import read_manifest, select

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
                    prefix, how = qemu_prefix(qemu, model, command, env), f"qemu -cpu {model}"
                else:
                    rows.append((mod, v.name, "-", f"skipped: {cand.reason}", 0.0))
                    continue
            run_env = dict(env, FATDISPATCH_FORCE=f"{mod}:{v.name}")
            runs = [(prefix, how)]
            model = QEMU_MODELS.get(v.x86_64_level or 0)
            if (qemu and model and cand.usable and v.kind == "cpu" and v.arch == "x86_64"
                    and (v.x86_64_level or 0) < (hw.cpu.x86_64_level or 0)):
                # also on its own, older CPU model
                runs.append((qemu_prefix(qemu, model, command, env), f"qemu -cpu {model}"))
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
