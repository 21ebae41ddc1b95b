"""fatdispatch's benchmark suite: one command, one table, raw results kept.

    python benchmarks/run_all.py            # full run (a few minutes)
    python benchmarks/run_all.py --tiny     # every benchmark on a tiny size (what the tests run)

Measured side by side in one run, contenders interleaved, medians over many fresh interpreters:

1. import overhead: ``import fatdemo`` (fat, dispatched) against the same package built as one plain extension,
   on a CPU-only host (pick cached; first import; unusable cache folder), a simulated NVIDIA host and inside a
   PyInstaller one-folder app (not in ``--tiny``);
2. probe cost, cold (with its import) and warm: fatdispatch (the probe module alone, and through the package),
   archspec, py-cpuinfo, NumPy's __cpu_features__, and the floor: importing an empty compiled module;
3. call overhead: a trivial function through the bound module against the same extension imported directly;
4. pick quality: every build's kernel throughput, cache-resident and memory-bound (kernel_speed.py);
5. build cost: all variants in parallel against one after another, and each variant's size;
6. GPU: only where an NVIDIA GPU is present (recorded as not run otherwise).

Raw results go to benchmarks/results/<UTC time>.json.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fatdemo"
sys.path.insert(0, str(Path(__file__).parent))
import kernel_speed  # noqa: E402


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FATDISPATCH_", "PYTHONDONTWRITEBYTECODE"))}
    env.update(extra)
    return env


def child(py: str, code: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env or clean_env(), cwd="/")
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- the plain twin of fatdemo


def build_plain_twin(site: Path, level_flags: list[str]) -> Path:
    """fatdemo's _core.c built as one ordinary extension, in a package ``fatdemo_plain`` (no fatdispatch),
    installed in ``site`` beside fatdemo, so both are found the same way along sys.path."""
    pkg = site / "fatdemo_plain"
    pkg.mkdir(parents=True)
    init = (EXAMPLE / "src" / "fatdemo" / "__init__.py").read_text()
    init = "".join(line for line in init.splitlines(keepends=True) if "_fatdispatch" not in line)
    init = init.replace("return str(_core.__fatdispatch_variant__)", "return 'plain'")
    (pkg / "__init__.py").write_text(init)
    inc = sysconfig.get_paths()["include"]
    out = pkg / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", *level_flags, f"-I{inc}", "-DFATDISPATCH_VARIANT=\"plain\"",
                    str(EXAMPLE / "src" / "fatdemo" / "_core.c"), "-o", str(out)], check=True)
    compileall.compile_dir(str(pkg), quiet=1)
    return site


IMPORT_CODE = ("import time; t = time.perf_counter(); import {mod}; dt = time.perf_counter() - t; "
               "import json, sys; print(json.dumps({{'s': dt, 'v': {mod}.variant(), "
               "'hit': 'fatdispatch' not in sys.modules}}))")  # a hit needs no Python of fatdispatch's
NO_CACHE_DIR = "/proc/fatdispatch-cache"  # a folder nobody can create: an unusable cache folder for any user


def bench_import(py: str, runs: int, work: Path, gpu_host: "dict | None" = None) -> dict:
    """``import fatdemo`` against the plain twin (``import fatdemo_plain``, the same site-packages), interleaved
    in fresh interpreters, in every situation a host can be in:

    * ``hit``: the pick cache answers (every import after the first one);
    * ``first``: a fresh cache folder each time (the full decision, every reason, and writing the pick);
    * ``unwritable``: no cache folder can be used, neither in the home nor a runtime folder nor under TMPDIR
      (the full decision, no write);
    * ``runtime_dir``: the home's unusable, but a private XDG_RUNTIME_DIR keeps the picks;
    * ``own_tmp``: the home's unusable and no XDG_RUNTIME_DIR (containers, CI, batch jobs): fatdispatch's own
      ``$TMPDIR/fatdispatch-<uid>`` keeps the picks;
    * ``gpu_hit`` / ``gpu_first`` (where ``gpu_host`` runs commands on a simulated NVIDIA host).
    """
    base = clean_env()
    base.pop("XDG_RUNTIME_DIR", None)
    run_dir = work / "run"
    run_dir.mkdir(mode=0o700)
    base["TMPDIR"] = str(work / "tmp")  # this run's own: no pick from elsewhere answers
    (work / "tmp").mkdir(mode=0o700)
    shared_tmp = work / "shared-tmp"  # like /tmp: sticky, world-writable
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    no_home = dict(base, XDG_CACHE_HOME=NO_CACHE_DIR, HOME=NO_CACHE_DIR)
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "plain": ("fatdemo_plain", dict(base, XDG_CACHE_HOME=str(work / "hit"))),
        "hit": ("fatdemo", dict(base, XDG_CACHE_HOME=str(work / "hit"))),
        "first": ("fatdemo", dict(base)),
        "unwritable": ("fatdemo", dict(no_home, TMPDIR=NO_CACHE_DIR)),
        "runtime_dir": ("fatdemo", dict(no_home, TMPDIR=NO_CACHE_DIR, XDG_RUNTIME_DIR=str(run_dir))),
        "own_tmp": ("fatdemo", dict(no_home, TMPDIR=str(shared_tmp))),
    }
    for warm in ("hit", "runtime_dir", "own_tmp"):  # fills the pick caches
        child(py, IMPORT_CODE.format(mod="fatdemo"), cases[warm][1])
    samples: dict[str, list[float]] = {k: [] for k in cases}
    picks: dict[str, str] = {}
    hits: dict[str, int] = {k: 0 for k in cases if k != "plain"}  # how many imports the pick cache answered
    for i in range(runs):  # interleaved
        for name, (mod, env) in cases.items():
            if name == "first":
                env = dict(env, XDG_CACHE_HOME=str(work / f"first-{i}"))
            r = child(py, IMPORT_CODE.format(mod=mod), env)
            samples[name].append(r["s"])
            picks[name] = r["v"]
            if name in hits:
                hits[name] += bool(r["hit"])
    if gpu_host is not None:
        for name, value in gpu_host["run"](py, runs).items():
            samples[name] = value["s"]
            picks[name] = value["v"]
    plain = med(samples["plain"])
    out: dict[str, object] = {"runs": runs, "picks": picks, "hits": hits, "samples_s": samples,
                              "median_s": {k: med(v) for k, v in samples.items()}}
    out["added_s"] = {k: med(v) - (med(samples["gpu_plain"]) if k.startswith("gpu_") and "gpu_plain" in samples
                                   else plain) for k, v in samples.items() if not k.endswith("plain")}
    # the names the earlier results and the tests read
    out.update(fat_median_s=med(samples["hit"]), plain_median_s=plain, full_path_median_s=med(samples["first"]),
               added_median_s=med(samples["hit"]) - plain, full_path_added_median_s=med(samples["first"]) - plain,
               ratio=med(samples["hit"]) / plain)
    return out


PROBE_MODULE = "fatdispatch: `_fatdispatch.cpu()`"
FLOOR = "floor: import of an empty compiled module"
PROBES = {
    # The probe alone: the one compiled module, no package import (what a tool that only wants the CPU uses).
    PROBE_MODULE: ("import _fatdispatch as m; m.cpu()", "m.cpu()"),
    # The same probe as the runtime records it (a CPU value with its notes), through the package.
    "fatdispatch: `fatdispatch._cpu.probe_cpu()`": ("import fatdispatch._cpu as r; r.probe_cpu()",
                                                   "r._cpu_cached = None; r.probe_cpu()"),
    "archspec": ("import archspec.cpu; archspec.cpu.host()", "archspec.cpu.host.cache_clear() if hasattr(archspec.cpu.host, 'cache_clear') else None; archspec.cpu.host()"),
    "numpy __cpu_features__": ("from numpy._core._multiarray_umath import __cpu_features__ as f; len(f)", "len(f)"),
    "py-cpuinfo": ("import cpuinfo; cpuinfo.get_cpu_info()", None),
    # What loading any compiled module costs here: no probe that runs CPUID can be cheaper (see build_floor_module).
    FLOOR: ("import fd_bench_empty", None),
}
PROBE_CODE = """
import time
t = time.perf_counter()
{cold}
cold = time.perf_counter() - t
warm = []
for _ in range({warm_runs}):
    t = time.perf_counter()
    {warm}
    warm.append(time.perf_counter() - t)
warm.sort()
import json; print(json.dumps({{'cold': cold, 'warm': warm[len(warm) // 2] if warm else None}}))
"""


def bench_probes(py: str, runs: int, slow_runs: int) -> dict:
    out: dict[str, dict] = {}
    names = list(PROBES)
    samples: dict[str, dict[str, list[float]]] = {n: {"cold": [], "warm": []} for n in names}
    for i in range(runs):
        for name in names:
            if name == "py-cpuinfo" and i >= slow_runs:
                continue
            cold, warm = PROBES[name]
            code = PROBE_CODE.format(cold=cold, warm=warm or "pass", warm_runs=50 if warm else 0)
            try:
                r = child(py, code)
            except RuntimeError as exc:
                out[name] = {"error": str(exc)[-300:]}
                continue
            samples[name]["cold"].append(r["cold"])
            if r["warm"] is not None:
                samples[name]["warm"].append(r["warm"])
    for name in names:
        if name in out:
            continue
        s = samples[name]
        out[name] = {"cold_median_s": med(s["cold"]), "warm_median_s": med(s["warm"]) if s["warm"] else None,
                     "runs": len(s["cold"]), "cold_s": s["cold"]}
    base = out[PROBE_MODULE]["cold_median_s"]
    for name in names:
        if "cold_median_s" in out[name]:
            out[name]["x_fatdispatch_cold"] = out[name]["cold_median_s"] / base
    return out


def build_floor_module(py: str) -> None:
    """An extension module with nothing in it, beside ``_fatdispatch`` in the benchmark venv (same flags)."""
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    src = Path(site) / "fd_bench_empty.c"
    src.write_text('#include <Python.h>\nstatic struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "fd_bench_empty"};\n'
                   "PyMODINIT_FUNC PyInit_fd_bench_empty(void) { return PyModuleDef_Init(&d); }\n")
    out = Path(site) / f"fd_bench_empty{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(out)],
                   check=True)
    src.unlink()


CALL_CODE = """
import sys, time, json
sys.path.insert(0, {twin!r})
import fatdemo, fatdemo_plain
f, g = fatdemo._core.noop, fatdemo_plain._core.noop
def loop(fn, n=200000):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n
loop(f); loop(g)
fat, plain = [], []
for _ in range({reps}):
    fat.append(loop(f)); plain.append(loop(g))
fat.sort(); plain.sort()
print(json.dumps({{'fat': fat[len(fat)//2], 'plain': plain[len(plain)//2], 'same_type': type(fatdemo._core) is type(fatdemo_plain._core)}}))
"""


def bench_calls(py: str, twin: Path, runs: int, reps: int) -> dict:
    fat, plain = [], []
    same = True
    for _ in range(runs):
        r = child(py, CALL_CODE.format(twin=str(twin), reps=reps))
        fat.append(r["fat"])
        plain.append(r["plain"])
        same &= r["same_type"]
    return {"fat_median_s": med(fat), "plain_median_s": med(plain), "ratio": med(fat) / med(plain),
            "module_is_the_extension": same, "runs": runs}


def bench_venv(work: Path, tiny: bool) -> str:
    """A fresh virtual environment with fatdispatch and fatdemo installed from their wheels, as a user has them
    (no editable finder, bytecode compiled), so import timings mean what users get."""
    wheels = work / "wheels"
    env = clean_env(PIP_NO_INDEX="1")
    if tiny:
        env["FATDISPATCH_SKIP_CUDA"] = "1"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT), str(EXAMPLE)], check=True, env=env, capture_output=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = site_of(str(py))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    compileall.compile_dir(site, quiet=1)
    return str(py)


def site_of(py: str) -> str:
    return subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def simulated_gpu_host(work: Path) -> "dict | None":
    """The import benchmark's runs on a simulated NVIDIA host: one H200 (compute capability 9.0) under driver 580
    (tests/simdriver: a libnvidia-ml.so.1 built against NVIDIA's nvml.h and a libcuda.so.1 stub, found on the
    library path; /proc/driver/nvidia in a private mount namespace), or None where it cannot be made here."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import simdriver

        problem = simdriver.namespace_problem()
        if problem:
            raise simdriver.Unavailable(problem)
        machine = json.loads((ROOT / "tests" / "fixtures" / "machines" / "h200-driver580.json").read_text())
        libdir, proc = simdriver.prepare(machine, work / "gpu-host")
    except Exception as exc:  # noqa: BLE001 - the benchmark runs without it, and says why
        print(f"   (no simulated GPU host: {type(exc).__name__}: {exc})", flush=True)
        return None
    finally:
        sys.path.pop(0)

    def run(py: str, runs: int) -> dict:
        # the plain twin of what is bound there: the cuda-sm90 build itself, as one ordinary extension
        site = Path(site_of(py))
        twin = site / "fatdemo_cuda_plain"
        twin.mkdir(exist_ok=True)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        shutil.copy(site / "fatdemo" / "_core.variants" / "cuda-sm90" / f"_core{suffix}", twin / f"_core{suffix}")
        shutil.copy(site / "fatdemo_plain" / "__init__.py", twin / "__init__.py")
        compileall.compile_dir(str(twin), quiet=1)
        env = clean_env(XDG_CACHE_HOME=str(work / "gpu-host-cache"))
        env.pop("XDG_RUNTIME_DIR", None)

        def one(mod: str, e: dict) -> dict:
            out = simdriver.run_prepared(libdir, proc, [py, "-c", IMPORT_CODE.format(mod=mod)], e)
            if out.returncode != 0:
                raise RuntimeError(f"benchmark child failed on the simulated GPU host: {out.stderr}")
            return json.loads(out.stdout.strip().splitlines()[-1])

        one("fatdemo", env)  # fills the pick cache (and the GPU facts cache)
        samples: dict[str, dict] = {k: {"s": [], "v": ""} for k in ("gpu_plain", "gpu_hit", "gpu_first")}
        for i in range(runs):
            for key, mod, e in (("gpu_plain", "fatdemo_cuda_plain", env), ("gpu_hit", "fatdemo", env),
                                ("gpu_first", "fatdemo", dict(env, XDG_CACHE_HOME=str(work / f"gpu-first-{i}")))):
                r = one(mod, e)
                samples[key]["s"].append(r["s"])
                samples[key]["v"] = r["v"]
        return samples

    return {"run": run}


FROZEN_APP = ("import time, sys\nt = time.perf_counter()\nimport {mod}\ndt = time.perf_counter() - t\n"
              "print(dt, {mod}.variant())\n")


def bench_frozen(py: str, work: Path, runs: int) -> dict:
    """``import fatdemo`` inside a PyInstaller one-folder app against the same app importing the plain twin."""
    work.mkdir()
    apps = {}
    for name, mod in (("fat", "fatdemo"), ("plain", "fatdemo_plain")):
        script = work / f"{name}_app.py"
        script.write_text(FROZEN_APP.format(mod=mod))
        # this interpreter's PyInstaller, over the benchmark venv's packages (fatdispatch and fatdemo from wheels)
        proc = subprocess.run([sys.executable, "-m", "PyInstaller", "--onedir", "--noconfirm", "--log-level", "WARN",
                               "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
                               "--specpath", str(work), str(script)], capture_output=True, text=True,
                              env=clean_env(PYTHONPATH=site_of(py)))
        if proc.returncode != 0:
            return {"run": False, "why": f"PyInstaller failed: {proc.stderr[-300:]}"}
        apps[name] = str(work / "dist" / f"{name}_app" / f"{name}_app")
    env = clean_env(XDG_CACHE_HOME=str(work / "cache"))
    subprocess.run([apps["fat"]], env=env, capture_output=True, check=True)  # fills the pick cache
    samples: dict[str, list[float]] = {"fat": [], "plain": []}
    picks = {}
    for _ in range(runs):
        for name, app in apps.items():
            out = subprocess.run([app], env=env, capture_output=True, text=True, check=True).stdout.split()
            samples[name].append(float(out[0]))
            picks[name] = out[1]
    return {"run": True, "runs": runs, "picks": picks, "samples_s": samples, "fat_median_s": med(samples["fat"]),
            "plain_median_s": med(samples["plain"]), "added_s": med(samples["fat"]) - med(samples["plain"])}


def bench_build(py: str, tiny: bool) -> dict:
    result: dict[str, object] = {}
    for label, jobs in (("parallel", "0"), ("serial", "1")):
        work = Path(tempfile.mkdtemp())
        src = work / "fatdemo"
        shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.variants"))
        env = clean_env(FATDISPATCH_BUILD_JOBS=jobs, PIP_NO_INDEX="1")
        if tiny:
            env["FATDISPATCH_SKIP_CUDA"] = "1"
        t = time.perf_counter()
        subprocess.run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"),
                        str(src)], check=True, env=env, capture_output=True)
        result[f"{label}_s"] = time.perf_counter() - t
        if label == "parallel":
            wheel = next((work / "dist").glob("*.whl"))
            info = json.loads(subprocess.run([py, "-m", "fatdispatch", "inspect", "--json", str(wheel)],
                                             capture_output=True, text=True, check=True).stdout)
            result["sizes"] = {b["name"]: b["size"] for b in info["modules"][0]["builds"]}
            result["wheel_size"] = info["size"]
        shutil.rmtree(work)
    result["jobs"] = os.cpu_count()
    result["speedup"] = result["serial_s"] / result["parallel_s"]  # type: ignore[operator]
    return result


def gpu_status() -> dict:
    if not os.path.exists("/proc/driver/nvidia/version"):
        return {"run": False, "why": "no NVIDIA driver on this machine (/proc/driver/nvidia/version missing)"}
    return {"run": False, "why": "GPU benchmarks run on a GPU machine: see README 'GPU' section"}


def main() -> int:
    ap = argparse.ArgumentParser(description="fatdispatch benchmarks")
    ap.add_argument("--tiny", action="store_true", help="every benchmark once on a tiny size (tests)")
    ap.add_argument("--out", help="results file (default benchmarks/results/<UTC>.json)")
    args = ap.parse_args()
    py = sys.executable
    tiny = args.tiny
    from fatdispatch._cpu import probe_cpu
    cpu = probe_cpu()
    level_flags = {1: [], 2: ["-march=x86-64-v2"], 3: ["-march=x86-64-v3"], 4: ["-march=x86-64-v4"]}.get(
        cpu.x86_64_level or 1, [])
    results: dict[str, object] = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu_level": cpu.x86_64_level, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "tiny": tiny,
    }
    dev_site = sysconfig.get_paths()["purelib"]  # archspec, py-cpuinfo, numpy for the probe comparison
    with tempfile.TemporaryDirectory() as tmp:
        print("0/6 building the wheels into a fresh virtual environment ...", flush=True)
        bpy = bench_venv(Path(tmp), tiny)
        twin = build_plain_twin(Path(site_of(bpy)), level_flags)
        build_floor_module(bpy)
        print("1/6 import overhead ...", flush=True)
        work = Path(tmp) / "import"
        work.mkdir()
        results["import"] = bench_import(bpy, 3 if tiny else 41, work, gpu_host=None if tiny else simulated_gpu_host(Path(tmp)))
        if not tiny:
            results["frozen"] = bench_frozen(bpy, Path(tmp) / "frozen", 21)
        print("2/6 probe cost ...", flush=True)
        os.environ["PYTHONPATH"] = dev_site  # the others' packages; fatdispatch comes from the fresh venv's wheel
        try:
            results["probe"] = bench_probes(bpy, 1 if tiny else 31, 1 if tiny else 5)
        finally:
            del os.environ["PYTHONPATH"]
        print("3/6 call overhead ...", flush=True)
        results["calls"] = bench_calls(bpy, twin, 1 if tiny else 7, 3 if tiny else 9)
        print("4/6 pick quality ...", flush=True)
        results["pick"] = kernel_speed.measure(bpy, 1 if tiny else 5, 3 if tiny else 15)
    print("5/6 build cost ...", flush=True)
    results["build"] = bench_build(py, tiny)
    results["gpu"] = gpu_status()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        results["when"].replace(":", "").replace("+0000", "Z") + ("-tiny" if tiny else "") + ".json")  # type: ignore[union-attr]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"\nraw results: {out}")
    return 0


def report(r: dict) -> str:
    us = 1e6
    imp, calls, build = r["import"], r["calls"], r["build"]
    lines = [f"fatdispatch benchmarks, {r['when']}, Python {r['machine']['python']}, x86-64-v{r['machine']['cpu_level']}, "
             f"{r['machine']['cpus']} CPUs" + (" (TINY run: numbers meaningless)" if r["tiny"] else ""), ""]
    lines.append("| measure | fatdispatch | reference | difference / ratio |")
    lines.append("|---|---|---|---|")
    rows = [("hit", "warm import, CPU-only host (the pick cache answers)", "< 0.4 ms added"),
            ("gpu_hit", "warm import, simulated NVIDIA host (H200, driver 580)", "< 0.4 ms added"),
            ("first", "first import: full decision with every reason, pick written", "< 1.5 ms added"),
            ("gpu_first", "first import on the simulated NVIDIA host (NVML asked)", ""),
            ("unwritable", "no cache folder usable: home, XDG_RUNTIME_DIR, TMPDIR (full decision, nothing kept)",
             "no slower than a first import"),
            ("runtime_dir", "home cache unusable, private XDG_RUNTIME_DIR keeps the picks", "< 0.4 ms added"),
            ("own_tmp", "home cache unusable, no XDG_RUNTIME_DIR: $TMPDIR/fatdispatch-<uid> keeps the picks",
             "< 0.4 ms added")]
    for key, what, target in rows:
        if key not in imp.get("added_s", {}):
            continue
        gpu = key.startswith("gpu_") and "gpu_plain" in imp["median_s"]
        plain = imp["median_s"]["gpu_plain" if gpu else "plain"]
        twin = "the cuda-sm90 build as a plain extension" if gpu else "plain twin"
        lines.append(f"| `import fatdemo`, {what} ({imp['runs']} fresh interpreters, interleaved; picks "
                     f"{imp['picks'][key]}) | {imp['median_s'][key] * us:.0f} us | {twin} {plain * us:.0f} us | "
                     f"+{imp['added_s'][key] * us:.0f} us {target} |")
    fz = r.get("frozen")
    if fz and fz.get("run"):
        lines.append(f"| `import fatdemo` in a PyInstaller one-folder app, warm ({fz['runs']} runs; picks "
                     f"{fz['picks']['fat']}) | {fz['fat_median_s'] * us:.0f} us | plain twin's app "
                     f"{fz['plain_median_s'] * us:.0f} us | +{fz['added_s'] * us:.0f} us < 0.4 ms added |")
    elif fz:
        lines.append(f"| PyInstaller one-folder app | not run: {fz['why']} | | |")
    p = r["probe"]
    for name, d in p.items():
        if "error" in d:
            lines.append(f"| CPU probe: {name} | | failed: {d['error'][:60]} | |")
            continue
        warm = f", warm {d['warm_median_s'] * us:.1f} us" if d.get("warm_median_s") is not None else ""
        x = d["x_fatdispatch_cold"]
        lines.append(f"| CPU probe, cold incl. import: {name} ({d['runs']} runs) | | {d['cold_median_s'] * 1e3:.3f} ms{warm} | "
                     + (f"{x:.0f}x" if x >= 10 else f"{x:.2f}x") + " the probe module's time |")
    if all("cold_median_s" in p.get(k, {}) for k in (PROBE_MODULE, "archspec", FLOOR)):
        arch = p["archspec"]["cold_median_s"]
        lines.append(f"| archspec's cold probe over fatdispatch's (target >= 100x) | "
                     f"{arch / p[PROBE_MODULE]['cold_median_s']:.0f}x | over the floor: {arch / p[FLOOR]['cold_median_s']:.0f}x "
                     f"(no compiled probe can do better here) | |")
    lines.append(f"| call `noop()` through the bound module vs the extension imported directly | "
                 f"{calls['fat_median_s'] * 1e9:.1f} ns | {calls['plain_median_s'] * 1e9:.1f} ns | "
                 f"ratio {calls['ratio']:.3f} (module is the extension itself: {calls['module_is_the_extension']}) |")
    lines.append(f"| build all variants (pip wheel), parallel on {build['jobs']} cores vs serial | "
                 f"{build['parallel_s']:.1f} s | {build['serial_s']:.1f} s | {build['speedup']:.2f}x |")
    lines.append("")
    text, _ = kernel_speed.table(r["pick"])
    lines.append("Kernel throughput per build (GB/s of input per buffer; % of the fastest):")
    lines.append("```")
    lines.append(text)
    lines.append("```")
    lines.append("Variant sizes: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in build["sizes"].items())
                 + f"; wheel {build['wheel_size'] / 1024:.0f} KiB")
    lines.append(f"GPU: {r['gpu']['why'] if not r['gpu']['run'] else 'see results'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
