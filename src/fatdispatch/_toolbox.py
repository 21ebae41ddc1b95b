"""Packagers' commands: ``python -m fatdispatch test-variants [--qemu] -- COMMAND...``.

The plan is pure (:func:`plan_runs`: manifests, this machine and the emulated CPU models in, runs out); the rest
resolves the command as a shell would, probes each CPU model once, runs, and prints a table.

* Every fat module found is forced together: one run per build name (``FATDISPATCH_FORCE=a._core:x86-64-v2,
  b._ext:x86-64-v2``), never one run per module.
* With ``--qemu`` each CPU model (default ``qemu64,Nehalem,Haswell``) gets one run, each module forced to its
  best build for that model's x86-64 level.  A build that runs on its own model is not also forced natively on
  this (newer) CPU: the emulated run is the stronger test of the same build.
* A model on which a dependency of the tested packages cannot run (NumPy 2.4 needs x86-64-v2, so ``import
  numpy`` dies on qemu64) is skipped with a line saying so, found by a quick import probe under that model.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ._load import fat_modules, hardware
from ._frozen import qemu_prefix
from ._manifest import read_manifest
from ._records import NO_GPU_PROBE, Hardware, Manifest, Variant
from ._select import select

DEFAULT_MODELS = ("qemu64", "Nehalem", "Haswell")  # x86-64 v1, v2, v3; qemu's TCG has no AVX-512


@dataclass(frozen=True)
class Run:
    """One run of the test command: the builds forced (module -> build) and where (None: natively)."""

    forced: tuple[tuple[str, str], ...]
    model: str | None = None

    @property
    def label(self) -> str:
        names = {b for _, b in self.forced}
        return names.pop() if len(names) == 1 else ",".join(f"{m}:{b}" for m, b in self.forced)

    @property
    def force_value(self) -> str:
        return ",".join(f"{m}:{b}" for m, b in self.forced)


@dataclass
class Plan:
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label, why)


def _x86_cpu(v: Variant) -> bool:
    return v.kind == "cpu" and v.arch == "x86_64"


def plan_runs(usable: Mapping[str, Mapping[str, str]], manifests: Mapping[str, Manifest],
              models: Mapping[str, int], host_level: int) -> Plan:
    """The runs for ``manifests`` (module -> manifest).  ``usable[module][build]`` is "" where the build runs
    here, else why not; ``models``: the CPU models to emulate (name -> x86-64 level), already probed."""
    plan = Plan()
    covered: set[tuple[str, str]] = set()
    seen: set[tuple[tuple[str, str], ...]] = set()
    for model, level in models.items():
        if level <= 0:
            continue
        if level == host_level:
            plan.skipped.append((f"qemu -cpu {model}", f"x86-64-v{level}, the level of this machine: the native "
                                                       "runs cover it"))
            continue
        forced = []
        for mod, man in sorted(manifests.items()):
            fits = [v for v in man.variants if _x86_cpu(v) and (v.x86_64_level or 1) <= level]
            if fits:
                best = max(fits, key=lambda v: (v.x86_64_level or 1, v.priority))
                forced.append((mod, best.name))
        key = tuple(forced)
        if not forced or key in seen:
            continue
        seen.add(key)
        plan.runs.append(Run(key, model))
        covered.update(forced)
    names: list[str] = []
    for man in manifests.values():
        names += [v.name for v in man.variants if v.name not in names]
    for name in names:
        forced = []
        for mod, man in sorted(manifests.items()):
            if name not in {v.name for v in man.variants} or (mod, name) in covered:
                continue
            why = usable[mod][name]
            if why:
                plan.skipped.append((f"{mod}:{name}", why))
            else:
                forced.append((mod, name))
        if forced:
            plan.runs.insert(sum(r.model is None for r in plan.runs), Run(tuple(forced)))
    return plan


# ---------------------------------------------------------------- resolving the command like a shell


def resolve_command(command: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``command`` with its program found on ``PATH`` (qemu-user does not search it) and a ``#!`` script
    turned into its interpreter + the script (qemu-user runs ELF files only)."""
    prog = command[0]
    path = prog if os.sep in prog else shutil.which(prog, path=env.get("PATH", os.defpath))
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"test-variants: {prog}: command not found on PATH")
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        interp = shlex.split(head[2:].split(b"\n", 1)[0].decode("utf-8", "replace"))
        if interp and os.path.basename(interp[0]) == "env":
            interp = interp[1:]
            found = shutil.which(interp[0], path=env.get("PATH", os.defpath)) if interp else None
            if found:
                interp[0] = found
        if interp:
            return [*interp, path, *command[1:]]
    return [path, *command[1:]]


def python_of(command: Sequence[str]) -> str:
    """The Python interpreter a resolved command runs (for the probes), else the one running fatdispatch."""
    return command[0] if re.match(r"python[0-9.]*$", os.path.basename(command[0])) else sys.executable


def dependencies_of(packages: Sequence[str], command: Sequence[str]) -> list[str]:
    """Top-level import names the tests need besides the fat packages: each fat package's distribution's
    requirements (fatdispatch aside) and the module of ``python -m MODULE``."""
    from importlib import metadata

    out: list[str] = []
    if len(command) >= 3 and command[1] == "-m":
        out.append(command[2].split(".")[0])
    try:
        top = metadata.packages_distributions()
    except Exception:  # pragma: no cover - broken metadata: no probe beyond the command's module
        return out
    to_import = {dist.lower().replace("_", "-"): name for name, dists in top.items() for dist in dists}
    for pkg in packages:
        for dist in top.get(pkg, []):
            for req in metadata.requires(dist) or []:
                if "extra ==" in req:
                    continue
                name = re.split(r"[\s;\[<>=!~(]", req, maxsplit=1)[0].lower().replace("_", "-")
                mod = to_import.get(name)
                if mod and name != "fatdispatch" and mod not in out and mod not in packages:
                    out.append(mod)
    return out


def probe_model(qemu: str, model: str, python: str, imports: Sequence[str], env: Mapping[str, str],
                timeout: float = 300) -> tuple[int, str]:
    """(x86-64 level under ``model``, "" or why the model cannot run the tests' dependencies)."""
    code = ("import _fatdispatch as c, sys; print('level', c.cpu()['x86_64_level'], flush=True)\n"
            if _has_cpu_helper() else
            "import fatdispatch, sys; print('level', fatdispatch.hardware().cpu.x86_64_level, flush=True)\n")
    code += "".join(f"import {m}\n" for m in imports)
    clean = {k: v for k, v in env.items() if not k.startswith("FATDISPATCH_")}
    try:
        p = subprocess.run([qemu, "-cpu", model, python, "-c", code], env=clean, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0, f"the probe did not finish in {timeout:.0f} s"
    m = re.search(r"^level (\d+)", p.stdout, re.M)
    if m is None:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return 0, f"qemu cannot run Python as CPU model {model!r}: {last}"
    level = int(m.group(1))
    if p.returncode != 0:
        how = _how(p.returncode)
        last = (p.stderr.strip().splitlines() or [""])[-1]
        return level, f"`import {', '.join(imports)}` {how} on this CPU model" + (f" ({last})" if last else "")
    return level, ""


def _has_cpu_helper() -> bool:
    try:
        import _fatdispatch  # noqa: F401
    except ImportError:
        return False
    return True


def _how(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            return f"dies with {signal.Signals(-rc).name}"
        except ValueError:
            return f"dies with signal {-rc}"
    return f"fails (exit {rc})"


# ---------------------------------------------------------------- running


def _run_once(cmd: list[str], env: Mapping[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    rc = subprocess.run(cmd, env=dict(env)).returncode
    seconds = time.perf_counter() - started
    if rc == 0:
        return "passed", seconds
    return (f"FAILED (exit {rc})" if rc > 0 else f"FAILED ({_how(rc).replace('dies with ', '')})"), seconds


def _audit(folders: Sequence[str]) -> tuple[bool, str]:
    """The machine-code audit of the tested modules (True: clean or not possible here, with a line why)."""
    from .build import _audit

    try:
        outcome = _audit.run_audit(list(folders))
    except _audit.AuditError as exc:
        return True, f"test-variants: machine-code audit skipped: {exc}"
    return outcome.ok, outcome.text


def test_variants(command: Sequence[str], modules: Sequence[str] = (), use_qemu: bool = False,
                  env: Mapping[str, str] | None = None, paths: list[str] | None = None,
                  cpu_models: Sequence[str] = DEFAULT_MODELS, audit: bool = True) -> int:
    """Run ``command`` once per build name (all fat modules forced together), and with ``use_qemu`` once per
    CPU model under ``qemu-x86_64``; audit the modules' machine code first.  0: everything passed."""
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
    try:
        cmd = resolve_command(command, env)
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    failed = 0
    audit_failed = False
    if audit:
        ok, text = _audit([found[m] for m in names])
        print(text, flush=True)
        audit_failed = not ok
        failed += audit_failed
    hw = hardware(env)
    manifests = {m: read_manifest(found[m]) for m in names}
    usable = {m: {c.variant.name: ("" if c.usable else c.reason) for c in select(man, hw, env).candidates}
              for m, man in manifests.items()}
    qemu = shutil.which("qemu-x86_64") if use_qemu else None
    if use_qemu and qemu is None:
        print("test-variants: --qemu needs qemu-x86_64 (Debian/Ubuntu: apt-get install qemu-user)", file=sys.stderr)
        return 2
    models: dict[str, int] = {}
    model_lines: list[str] = []
    if qemu:
        packages = sorted({m.split(".")[0] for m in names})
        deps = dependencies_of(packages, cmd)
        for model in cpu_models:
            level, why = probe_model(qemu, model, python_of(cmd), deps, env)
            if why:
                model_lines.append(f"test-variants: qemu -cpu {model}: skipped: {why}")
                continue
            models[model] = level
    for line in model_lines:
        print(line, flush=True)
    plan = plan_runs(usable, manifests, models, hw.cpu.x86_64_level or 0)
    rows: list[tuple[str, str, str, float]] = []
    for run in plan.runs:
        # qemu_prefix: a PyInstaller one-folder launcher re-executes itself, so its variables go with -E
        prefix = qemu_prefix(qemu, run.model, cmd, env) if qemu and run.model else []
        how = f"qemu -cpu {run.model}" if run.model else "native"
        outcome, seconds = _run_once(prefix + cmd, dict(env, FATDISPATCH_FORCE=run.force_value))
        failed += outcome != "passed"
        rows.append((run.label, how, outcome, seconds))
    width = max([len(r[0]) for r in rows] + [len(s[0]) for s in plan.skipped] + [5])
    print(f"\n{'build':<{width}}  {'ran':<18} {'outcome':<10} seconds")
    for label, how, outcome, seconds in rows:
        print(f"{label:<{width}}  {how:<18} {outcome:<10} {seconds:7.2f}")
    for label, why in plan.skipped:
        print(f"{label:<{width}}  {'-':<18} skipped: {why}")
    for line in model_lines:
        print(line)
    passed = sum(r[2] == "passed" for r in rows)
    print(f"test-variants: {passed} passed, {failed} failed ({len(rows)} runs"
          + (", the audit failed)" if audit_failed else ")"))
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
