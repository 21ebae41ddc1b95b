"""Where a first ``import fatdemo`` spends its time (the full path: nothing cached), against the plain twin's.

    python benchmarks/first_split.py            # 21 fresh interpreters of each measure, interleaved
    python benchmarks/first_split.py --tiny     # 3 of each, no CUDA builds (what the tests run)

Builds the same fresh virtual environment as ``run_all.py`` (fatdispatch and fatdemo from their wheels, bytecode
compiled, the plain twin beside them) and measures, each in fresh interpreters with a cache home never used
before (so the pick is decided and written every time):

* ``first``: ``import fatdemo``, the whole first import, against ``import fatdemo_plain``;
* the Python modules the full path loads: each one's own share, from CPython's ``-X importtime`` of that very
  import (it adds its own overhead, so the shares are upper bounds), and, with the bytecode already read, what
  ``marshal.loads`` alone takes of each, cold (the first unmarshalling in a process, as an import has it);
* the work after them: the same import with those modules already loaded, and its steps, timed by wrapping the
  full path's functions (``fatdispatch._load``): reading the manifest, probing, ``select``, the build's checks,
  loading it, and writing the pick (the private folders opened or made, the atomic write, the pruning); once
  with a cache home never used, once where its folders already exist.

Prints medians in microseconds and writes them to ``benchmarks/results/<UTC time>-first.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run_all  # noqa: E402

TIMED = "import time; t = time.perf_counter_ns(); import {m}; print(time.perf_counter_ns() - t)"
# The full path's functions whose time is reported (each includes what it calls).
STEPS = ["decide", "read_manifest", "hardware_for", "select", "_report_decision", "confinement_roots",
         "checked_file", "remember", "open_private_dir", "write_private", "prune_private", "load_selection"]
WRAPPED = r"""
import json, sys, time
import fatdispatch._load as L
for m in {mods!r}:
    __import__(m)
T = {{}}
def wrap(name):
    f = getattr(L, name)
    def timed(*a, **k):
        t = time.perf_counter_ns()
        try:
            return f(*a, **k)
        finally:
            T[name] = T.get(name, 0) + time.perf_counter_ns() - t
    setattr(L, name, timed)
for name in {steps!r}:
    wrap(name)
import _fatdispatch
real = _fatdispatch.load_extension
def load_extension(*a):
    t = time.perf_counter_ns()
    try:
        return real(*a)
    finally:
        T["load_extension"] = T.get("load_extension", 0) + time.perf_counter_ns() - t
_fatdispatch.load_extension = load_extension
t = time.perf_counter_ns()
import fatdemo
T["import fatdemo"] = time.perf_counter_ns() - t
assert "fatdemo._core" not in _fatdispatch.hits, "the pick cache answered: not a first import"
print(json.dumps(T))
"""
UNMARSHAL = r"""
import importlib.util, json, marshal, sys, time
datas = []
for m in {mods!r}:
    spec = importlib.util.find_spec(m)
    datas.append((m, open(spec.cached, "rb").read()[16:]) if spec.cached else (m, None))
out = {{}}
for m, d in datas:
    if d is not None:
        t = time.perf_counter_ns()
        marshal.loads(d)
        out[m] = time.perf_counter_ns() - t
print(json.dumps(out))
"""


def importtime(py: str, env: dict[str, str]) -> dict[str, int]:
    """Each module's own import time (us) from ``-X importtime`` of a first ``import fatdemo``."""
    proc = subprocess.run([py, "-X", "importtime", "-c", "import fatdemo"], env=env, cwd="/", capture_output=True,
                          text=True, check=True)
    own: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            self_us, _, name = (p.strip() for p in line[len("import time:"):].split("|"))
            own[name] = int(self_us)
    return own


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--tiny", action="store_true", help="3 runs, no CUDA builds")
    ap.add_argument("--out", type=Path, default=run_all.ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    runs = 3 if args.tiny else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        py = run_all.bench_venv(work, tiny=args.tiny)
        run_all.build_plain_twin(Path(run_all.site_of(py)), [])
        base = run_all.clean_env()
        base.pop("XDG_RUNTIME_DIR", None)
        base["TMPDIR"] = str(work / "tmp")
        (work / "tmp").mkdir(mode=0o700)
        homes = iter(range(10**6))

        def fresh() -> dict[str, str]:  # a cache home never used: the pick is decided and written
            return dict(base, XDG_CACHE_HOME=str(work / f"cache-{next(homes)}"))

        def out_of(code: str, env: dict[str, str]) -> str:
            return subprocess.run([py, "-c", code], env=env, cwd="/", capture_output=True, text=True,
                                  check=True).stdout

        # which Python modules the full path loads, in the order it loads them (the package first)
        listing = "import sys{}; print(chr(10).join(sys.modules))"  # json would load _json itself
        before = set(out_of(listing.format(""), fresh()).split())
        loaded = out_of(listing.format(", fatdemo"), fresh()).split()
        mods = [m for m in loaded if m not in before and (m.startswith("fatdispatch") or m == "_json")]
        used = fresh()
        out_of("import fatdemo", used)  # a cache home whose folders exist (for the second split)
        samples: dict[str, list[float]] = {}

        def add(key: str, us: float) -> None:
            samples.setdefault(key, []).append(us)

        for _ in range(runs):  # interleaved
            add("first: import fatdemo", int(out_of(TIMED.format(m="fatdemo"), fresh())) / 1000)
            add("plain: import fatdemo_plain", int(out_of(TIMED.format(m="fatdemo_plain"), fresh())) / 1000)
            for name, us in importtime(py, fresh()).items():
                if name in mods or name == "_fatdispatch":
                    add(f"module {name} (-X importtime, own)", us)
            for name, ns in json.loads(out_of(UNMARSHAL.format(mods=mods), base)).items():
                add(f"unmarshal {name}", ns / 1000)
            for home, label in ((fresh(), "new cache home"), (used, "cache folders exist")):
                if label == "cache folders exist":
                    for entry in (Path(used["XDG_CACHE_HOME"]) / "fatdispatch" / "picks-v3").iterdir():
                        entry.unlink()  # no pick, so it is decided and written again
                for name, ns in json.loads(out_of(WRAPPED.format(mods=mods, steps=STEPS), home)).items():
                    add(f"{label}: {name}", ns / 1000)
        shutil.rmtree(work / "tmp", ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    module_keys = [k for k in medians if k.startswith("module ") and "_fatdispatch " not in k]
    medians["modules of the full path, own import times summed"] = sum(medians[k] for k in module_keys)
    medians["their unmarshalling summed"] = sum(medians[k] for k in medians if k.startswith("unmarshal "))
    plain = medians["plain: import fatdemo_plain"]
    print(f"first import, medians of {runs} fresh interpreters each, interleaved (us); full path modules: "
          f"{', '.join(mods)}")
    print(f"{'measure':72s} {'us':>8s}")
    for key, value in medians.items():
        print(f"{key:72s} {value:8.0f}")
    for label in ("new cache home", "cache folders exist"):
        print(f"added by the first import over the twin, modules loaded beforehand ({label}): "
              f"{medians[f'{label}: import fatdemo'] - plain:+.0f} us")
    print(f"added by the first import over the twin: {medians['first: import fatdemo'] - plain:+.0f} us")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{stamp}-first.json"
    out.write_text(json.dumps({"runs": runs, "modules": mods, "median_us": medians, "samples_us": samples},
                              indent=1) + "\n")
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
