"""Where a warm ``import fatdemo`` spends its time, step by step, against the plain twin's.

    python benchmarks/import_split.py            # 61 fresh interpreters of each, interleaved
    python benchmarks/import_split.py --tiny     # 3 of each, no CUDA builds (what the tests run)

Builds the same fresh virtual environment as ``run_all.py`` (fatdispatch and fatdemo from their wheels, the plain
twin beside them), then copies both packages into a folder put first on ``PYTHONPATH`` with timestamps added to
their ``__init__.py``: around the wiring line's ``import _fatdispatch``, around its ``install``, and around
``from . import _core``.  The pick cache is warmed first, so ``_core`` is a hit.  Prints the median of each step
in microseconds and writes them to ``benchmarks/results/<UTC time>-split.json`` (or ``--out``).

Where the simulated NVIDIA host of ``run_all.py`` can be made (not in ``--tiny``), the same steps there: ``fatdemo``
binds ``cuda-sm90`` from its pick, against that build as a plain extension, and what the hit reads beyond the
CPU-only one, ``_fatdispatch.gpu_facts_key`` (the boot id, the driver's version, the GPU list), timed on its
first and second call in a process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run_all  # noqa: E402

STEPS = ["before the __init__ body (finding and loading the package)", "import _fatdispatch", "install(...)",
         "from . import _core", "the rest of __init__"]
CODE = ("import time; t = time.perf_counter_ns(); import {m}; import builtins; T = builtins.FD_T; "
        "print(T[0] - t, T[1] - T[0], T[2] - T[1], T[3] - T[2], time.perf_counter_ns() - T[3])")
STAMP = "import time as _fd_t, builtins as _fd_b; _fd_b.FD_T = [_fd_t.perf_counter_ns()]"


def instrument(init: Path, fat: bool) -> None:
    text = init.read_text()
    core = "from . import _core  # noqa: E402"
    if fat:
        wiring = '__import__("_fatdispatch").install(__name__, ["_core"])'
        assert wiring in text, "the wiring line changed: update this benchmark"
        text = text.replace(wiring, f'{STAMP}; _fd = __import__("_fatdispatch"); '
                                    '_fd_b.FD_T.append(_fd_t.perf_counter_ns()); _fd.install(__name__, ["_core"])', 1)
        text = text.replace(core, f"_fd_b.FD_T.append(_fd_t.perf_counter_ns())\n{core}", 1)
    else:
        text = text.replace(core, f"{STAMP}; _fd_b.FD_T *= 3\n{core}", 1)  # no wiring line: two empty steps
    assert core in text
    init.write_text(text.replace(core, f"{core}\n_fd_b.FD_T.append(_fd_t.perf_counter_ns())", 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=61)
    ap.add_argument("--tiny", action="store_true", help="3 runs, no CUDA builds")
    ap.add_argument("--out", type=Path, default=run_all.ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    runs = 3 if args.tiny else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        py = run_all.bench_venv(work, tiny=args.tiny)
        site = Path(run_all.site_of(py))
        run_all.build_plain_twin(site, ["-march=x86-64-v3"])
        first = work / "first"
        for pkg in ("fatdemo", "fatdemo_plain"):
            shutil.copytree(site / pkg, first / pkg)
            instrument(first / pkg / "__init__.py", pkg == "fatdemo")
        env = run_all.clean_env(PYTHONPATH=str(first), XDG_CACHE_HOME=str(work / "cache"))
        env.pop("XDG_RUNTIME_DIR", None)
        subprocess.run([py, "-c", "import fatdemo"], env=env, check=True, cwd="/")  # the pick is written
        samples: dict[str, list[list[int]]] = {"fatdemo": [], "fatdemo_plain": []}
        for _ in range(runs):
            for mod, out in samples.items():
                proc = subprocess.run([py, "-c", CODE.format(m=mod)], env=env, cwd="/", capture_output=True,
                                      text=True, check=True)
                out.append([int(x) for x in proc.stdout.split()])
        hit = subprocess.run([py, "-c", "import fatdemo, sys; print('fatdispatch' not in sys.modules)"], env=env,
                             cwd="/", capture_output=True, text=True, check=True).stdout.strip() == "True"
        gpu = None if args.tiny else gpu_host_split(py, site, first, work, runs)
    medians = {mod: {step: statistics.median(r[i] for r in rows) / 1000 for i, step in enumerate(STEPS)}
               for mod, rows in samples.items()}
    print(f"warm import, medians of {runs} fresh interpreters each, interleaved (us); pick cache answered: {hit}")
    print(f"{'step':60s} {'fatdemo':>9s} {'plain':>9s}")
    for step in STEPS:
        print(f"{step:60s} {medians['fatdemo'][step]:9.0f} {medians['fatdemo_plain'][step]:9.0f}")
    result: dict = {"runs": runs, "hit": hit, "median_us": medians}
    if gpu is not None:
        result["gpu_host"] = gpu
        print(f"\nthe same on the simulated NVIDIA host (pick {gpu['variant']}; its twin is that build as a plain "
              f"extension; pick cache answered: {gpu['hit']})")
        print(f"{'step':60s} {'fatdemo':>9s} {'plain':>9s}")
        for step in STEPS:
            print(f"{step:60s} {gpu['median_us']['fatdemo'][step]:9.0f} {gpu['median_us']['fatdemo_cuda_plain'][step]:9.0f}")
        for call, us in gpu["gpu_facts_key_us"].items():
            print(f"_fatdispatch.gpu_facts_key, {call} call in a process: {us:.0f} us")
        hit = hit and gpu["hit"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{stamp}-split.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"raw results: {out}")
    return 0 if hit else 1


KEY_CODE = ("import os, time, _fatdispatch as f; t0 = time.perf_counter_ns(); f.gpu_facts_key(os.environ); "
            "t1 = time.perf_counter_ns(); f.gpu_facts_key(os.environ); t2 = time.perf_counter_ns(); "
            "print(t1 - t0, t2 - t1)")


def gpu_host_split(py: str, site: Path, first: Path, work: Path, runs: int) -> "dict | None":
    """The warm import's steps on run_all's simulated NVIDIA host, and the GPU facts key's cost; None (said) where
    that host cannot be made here."""
    sys.path.insert(0, str(run_all.ROOT / "tests"))
    try:
        import simdriver

        problem = simdriver.namespace_problem()
        if problem:
            raise simdriver.Unavailable(problem)
        machine = json.loads((run_all.ROOT / "tests" / "fixtures" / "machines" / "h200-driver580.json").read_text())
        libdir, proc = simdriver.prepare(machine, work / "gpu-host")
    except Exception as exc:  # noqa: BLE001 - the split runs without it, and says why
        print(f"(no simulated GPU host: {type(exc).__name__}: {exc})")
        return None
    finally:
        sys.path.pop(0)
    twin = first / "fatdemo_cuda_plain"  # the plain twin's package around the cuda-sm90 build itself
    shutil.copytree(first / "fatdemo_plain", twin)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    shutil.copy(site / "fatdemo" / "_core.variants" / "cuda-sm90" / f"_core{suffix}", twin / f"_core{suffix}")
    env = run_all.clean_env(PYTHONPATH=str(first), XDG_CACHE_HOME=str(work / "gpu-cache"))
    env.pop("XDG_RUNTIME_DIR", None)

    def on_host(code: str) -> str:
        out = simdriver.run_prepared(libdir, proc, [py, "-c", code], env)
        if out.returncode != 0:
            raise RuntimeError(f"the split failed on the simulated GPU host: {out.stderr}")
        return out.stdout

    on_host("import fatdemo")  # the pick (and the GPU facts) written
    rows: dict[str, list[list[int]]] = {"fatdemo": [], "fatdemo_cuda_plain": []}
    keys: list[list[int]] = []
    for _ in range(runs):
        for mod, out in rows.items():
            out.append([int(x) for x in on_host(CODE.format(m=mod)).split()])
        keys.append([int(x) for x in on_host(KEY_CODE).split()])
    state = on_host("import fatdemo, sys; print(fatdemo.variant(), 'fatdispatch' not in sys.modules)").split()
    return {"variant": state[0], "hit": state[1] == "True",
            "median_us": {mod: {step: statistics.median(r[i] for r in rs) / 1000 for i, step in enumerate(STEPS)}
                          for mod, rs in rows.items()},
            "gpu_facts_key_us": {"first": statistics.median(k[0] for k in keys) / 1000,
                                 "second": statistics.median(k[1] for k in keys) / 1000}}


if __name__ == "__main__":
    sys.exit(main())
