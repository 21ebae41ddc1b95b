"""The one check to run on a real NVIDIA GPU (written for an H200, compute capability 9.0), once.

    python benchmarks/gpu_check.py [--wheels DIR] [--out FILE] [--expect cuda-sm90]

On a machine without an NVIDIA GPU it prints "no GPU: <why>" and exits 0 (tests/test_gpu_check.py checks that).
On a GPU machine it:

1. installs fatdispatch's and fatdemo's wheels (from ``--wheels``, else built from this checkout with nvcc) into a
   private folder, and a plain twin of fatdemo (one ordinary extension) where a C compiler exists;
2. checks the pick is the build for this GPU (``cuda-sm90`` on an H200) and that the CUDA kernel's results equal
   the CPU build's (``FATDISPATCH_FORCE=cpu``) and Python's, on sizes from 0 bytes to 64 MiB;
3. times ``import fatdemo`` with the GPU probe cold (empty per-user cache: NVML is asked) and cached, against the
   plain twin, and NVML itself (``probe_gpus`` outside an import);
4. imports fatdemo in a parent, forks, and uses CUDA in the child (then in the parent);
5. measures the kernel's end-to-end throughput (``fatdemo.hamming``: allocate, copy in, count, copy out) next to
   host-to-device and device-to-device copies made through the driver API (``libcuda.so.1`` by ctypes);
6. records the real NVML answer as a machine description (``python -m fatdispatch capture``), a test fixture.

Every result goes to one JSON file (``--out``; default ``$OUT/gpu_check.json`` where ``$OUT`` is set, else
``benchmarks/results/gpu-check-<time>.json``). Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fatdemo"
SIZES = [0, 1, 7, 8, 9, 1000, 4096 + 3, (1 << 20) + 5, 64 << 20]


def first_gpu() -> tuple[tuple[int, int] | None, str | None]:
    """GPU 0's compute capability, or None and why this machine has no usable NVIDIA GPU. Cheap: a stat, then
    NVML by ctypes (never CUDA: this process forks children that use it)."""
    if not os.path.exists("/proc/driver/nvidia/version"):
        return None, "no NVIDIA driver (/proc/driver/nvidia/version is missing)"
    import ctypes

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return None, f"libnvidia-ml.so.1 cannot be loaded ({exc})"
    rc = nvml.nvmlInit_v2()
    if rc != 0:
        return None, f"nvmlInit failed (nvmlReturn_t {rc})"
    count, handle = ctypes.c_uint(0), ctypes.c_void_p()
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    try:
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return None, "NVML reports no GPU"
        if (nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) != 0
                or nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) != 0):
            return None, "NVML cannot tell GPU 0's compute capability"
    finally:
        nvml.nvmlShutdown()
    return (major.value, minor.value), None


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FATDISPATCH_", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"))}
    env.update(extra)
    return env


def child(code: str, env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-s", "-c", code], capture_output=True, text=True, env=env, cwd="/",
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- 1. install


def get_wheels(wheels: str | None, work: Path) -> list[Path]:
    if wheels:
        found = sorted(Path(wheels).glob("*.whl"))
        if not found:
            raise RuntimeError(f"no wheels in {wheels}")
        return found
    out = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT), str(EXAMPLE)], check=True, env=clean_env(PIP_NO_INDEX="1"))
    return sorted(out.glob("*.whl"))


def install(wheel_files: list[Path], site: Path) -> None:
    """Unpack the wheels into ``site`` (both are plain purelib/platlib wheels: no .data, no scripts needed)."""
    site.mkdir(parents=True, exist_ok=True)
    for w in wheel_files:
        with zipfile.ZipFile(w) as zf:
            zf.extractall(site)


def plain_twin(work: Path) -> Path | None:
    """fatdemo's C source as one ordinary extension (``fatdemo_plain``), or None without a C compiler."""
    if shutil.which("cc") is None:
        return None
    sys.path.insert(0, str(Path(__file__).parent))
    import run_all  # the benchmark suite's own twin

    return Path(run_all.build_plain_twin(work / "twin", ["-march=x86-64-v2"]))


# ---------------------------------------------------------------- 2. the pick and the results

RESULTS = """
import json, os, random, sys
import fatdemo
rng = random.Random(12345)
out = {"variant": fatdemo.variant(), "results": [], "error": None}
try:
    for n in SIZES:
        a = rng.randbytes(n); b = rng.randbytes(n)
        ref = (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).bit_count()
        got = fatdemo.hamming(a, b)
        out["results"].append([n, got, ref, fatdemo.popcount(a)])
except RuntimeError as exc:  # the build loaded, but its kernel could not run (a CUDA error): say which
    out["error"] = str(exc)
if hasattr(fatdemo._core, "cuda_device") and out["variant"].startswith("cuda") and out["error"] is None:
    out["device"] = list(fatdemo._core.cuda_device())
print(json.dumps(out))
"""


def check_results(env: dict[str, str], expect: str, sizes: list[int]) -> dict[str, Any]:
    code = RESULTS.replace("SIZES", repr(sizes))
    gpu = child(code, env)
    cpu = child(code, dict(env, FATDISPATCH_FORCE="cpu"))
    ok = gpu["error"] is None and all(g[1] == g[2] for g in gpu["results"]) and gpu["results"] == cpu["results"]
    return {"pick": gpu["variant"], "expected_pick": expect, "pick_ok": gpu["variant"] == expect,
            "cpu_build": cpu["variant"], "results_equal": ok, "kernel_error": gpu["error"],
            "device": gpu.get("device"), "sizes": sizes}


# ---------------------------------------------------------------- 3. timing

IMPORT = ("import time; t = time.perf_counter(); import {mod}; dt = time.perf_counter() - t; "
          "import json; print(json.dumps({{'s': dt, 'v': {mod}.variant()}}))")
PROBE = ("import time, json; import fatdispatch._gpu as r; t = time.perf_counter(); "
         "g = r.probe_gpus({'FATDISPATCH_GPU_CACHE': '0'}); "
         "print(json.dumps({'s': time.perf_counter() - t, 'reason': g.reason}))")


def timings(env: dict[str, str], twin: Path | None, runs: int, work: Path) -> dict[str, Any]:
    cold, cached, plain, nvml = [], [], [], []
    for i in range(runs):
        fresh = dict(env, XDG_CACHE_HOME=str(work / f"cold-{i}"))
        cold.append(child(IMPORT.format(mod="fatdemo"), fresh)["s"])  # empty cache: NVML asked in the import
        cached.append(child(IMPORT.format(mod="fatdemo"), fresh)["s"])  # the GPU cache answers
        nvml.append(child(PROBE, fresh)["s"])
        if twin is not None:
            plain.append(child(IMPORT.format(mod="fatdemo_plain"), dict(env, PYTHONPATH=str(twin)))["s"])
    out: dict[str, Any] = {"runs": runs, "import_cold_probe_s": cold, "import_cached_probe_s": cached,
                           "nvml_probe_s": nvml, "import_cold_median_s": med(cold),
                           "import_cached_median_s": med(cached), "nvml_probe_median_s": med(nvml)}
    if plain:
        out.update(plain_import_s=plain, plain_median_s=med(plain),
                   cached_added_over_plain_s=med(cached) - med(plain))
    return out


# ---------------------------------------------------------------- 4. fork

FORK = """
import json, os, random
import fatdemo
rng = random.Random(7)
a = rng.randbytes(1 << 20); b = rng.randbytes(1 << 20)
ref = (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).bit_count()
pid = os.fork()
if pid == 0:
    try:
        os._exit(0 if fatdemo.hamming(a, b) == ref else 3)
    except BaseException:
        os._exit(4)
_, status = os.waitpid(pid, 0)
parent = fatdemo.hamming(a, b) == ref
print(json.dumps({"variant": fatdemo.variant(), "child_status": os.waitstatus_to_exitcode(status), "parent_ok": parent}))
"""


# ---------------------------------------------------------------- 5. throughput

THROUGHPUT = """
import ctypes, json, os, time
import fatdemo
n = NBYTES
a = os.urandom(n); b = os.urandom(n)
fatdemo.hamming(a[:4096], b[:4096])  # first call: context creation, module load
ts = []
for _ in range(REPS):
    t = time.perf_counter(); fatdemo.hamming(a, b); ts.append(time.perf_counter() - t)
ts.sort()
kernel = ts[len(ts) // 2]
cu = ctypes.CDLL("libcuda.so.1")
def ok(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what} failed: CUresult {rc}")
ok(cu.cuInit(0), "cuInit")
dev = ctypes.c_int(); ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p(); ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
src = ctypes.c_uint64(); dst = ctypes.c_uint64()
ok(cu.cuMemAlloc_v2(ctypes.byref(src), ctypes.c_size_t(n)), "cuMemAlloc")
ok(cu.cuMemAlloc_v2(ctypes.byref(dst), ctypes.c_size_t(n)), "cuMemAlloc")
host = ctypes.create_string_buffer(a, n)
def timed(fn):
    fn(); ok(cu.cuCtxSynchronize(), "sync")
    xs = []
    for _ in range(REPS):
        t = time.perf_counter(); fn(); ok(cu.cuCtxSynchronize(), "sync"); xs.append(time.perf_counter() - t)
    xs.sort(); return xs[len(xs) // 2]
d2d = timed(lambda: ok(cu.cuMemcpyDtoD_v2(dst, src, ctypes.c_size_t(n)), "cuMemcpyDtoD"))
h2d = timed(lambda: ok(cu.cuMemcpyHtoD_v2(dst, host, ctypes.c_size_t(n)), "cuMemcpyHtoD"))
print(json.dumps({"variant": fatdemo.variant(), "bytes_per_input": n, "hamming_s": kernel,
                  "hamming_input_GBps": 2 * n / kernel / 1e9, "d2d_copy_s": d2d, "d2d_GBps": 2 * n / d2d / 1e9,
                  "h2d_copy_s": h2d, "h2d_GBps": n / h2d / 1e9,
                  "note": "hamming = cudaMalloc x3 + two host-to-device copies + kernel + copy back (fatdemo's API); "
                          "d2d GB/s counts bytes read + written"}))
"""


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", help="folder with fatdispatch's and fatdemo's wheels (default: build them here)")
    ap.add_argument("--out", help="results JSON (default $OUT/gpu_check.json or benchmarks/results/)")
    ap.add_argument("--expect", help="the build the pick must be (default: cuda-sm<XY> of GPU 0: cuda-sm90 on an H200)")
    ap.add_argument("--runs", type=int, default=11, help="fresh interpreters per timing (default 11)")
    ap.add_argument("--mib", type=int, default=256, help="MiB per input for the throughput (default 256)")
    ap.add_argument("--quick", action="store_true", help="result sizes up to 1 MiB only (a dry run)")
    args = ap.parse_args()

    cc, why = first_gpu()
    if cc is None:
        print(f"no GPU: {why}; nothing to check here (run this on a machine with an NVIDIA GPU)")
        return 0

    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    out_path = Path(args.out) if args.out else (
        Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
        else ROOT / "benchmarks" / "results" / f"gpu-check-{stamp}.json")
    report: dict[str, Any] = {"when": stamp, "python": sys.version.split()[0], "steps": {}, "failed": []}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    site = work / "site"

    def step(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - record and go on: one run must say as much as it can
            report["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report["failed"].append(name)
            print(f"[{name}] FAILED: {exc}", flush=True)
            return None
        report["steps"][name] = value
        print(f"[{name}] {time.perf_counter() - t:.1f} s: {json.dumps(value)[:600]}", flush=True)
        return value

    def capture() -> dict[str, Any]:
        fixture = out_path.with_name(out_path.stem + "-machine.json")
        subprocess.run([sys.executable, "-s", "-m", "fatdispatch", "capture", "-o", str(fixture)], check=True,
                       env=env, cwd="/")
        desc = json.loads(fixture.read_text())
        return {"fixture": str(fixture), "nvidia": desc["nvidia"]}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    wheel_files = step("wheels", lambda: [str(w) for w in get_wheels(args.wheels, work)])
    if wheel_files is None:
        out_path.write_text(json.dumps(report, indent=1) + "\n")
        return 1
    step("install", lambda: install([Path(w) for w in wheel_files], site) or {"site": str(site)})
    env = clean_env(PYTHONPATH=str(site), XDG_CACHE_HOME=str(work / "cache"))
    step("capture", capture)
    expect = args.expect or f"cuda-sm{cc[0]}{cc[1]}"  # an H200 (9.0): cuda-sm90
    report["gpu0_compute_capability"] = list(cc)
    sizes = [n for n in SIZES if n <= (1 << 21)] if args.quick else SIZES
    checked = step("pick_and_results", lambda: check_results(env, expect, sizes))
    if checked and not (checked["pick_ok"] and checked["results_equal"]):
        report["failed"].append("pick_and_results")
    def twin_step() -> dict[str, Any]:
        found = plain_twin(work)
        return {"path": str(found) if found else None, "why": None if found else "no C compiler (cc)"}

    twin = step("plain_twin", twin_step)
    twin_path = Path(twin["path"]) if twin and twin["path"] else None
    step("timings", lambda: timings(env, twin_path, args.runs, work))
    forked = step("fork", lambda: child(FORK, env))
    if forked and not (forked["child_status"] == 0 and forked["parent_ok"] and forked["variant"].startswith("cuda")):
        report["failed"].append("fork")
    code = THROUGHPUT.replace("NBYTES", str(args.mib << 20)).replace("REPS", "7")
    step("throughput", lambda: child(code, env, timeout=600))
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out_path}; " + (f"FAILED: {', '.join(report['failed'])}" if report["failed"] else "all checks passed"))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
