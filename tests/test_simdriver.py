"""Every GPU machine through the real NVML binding and the whole import path: the example's built wheel imported in
fresh interpreters on the simulated NVIDIA driver (tests/simdriver), each with the pick and the reasons.

The machines (tests/fixtures/machines/*.json) are written from specifications; each says so in "provenance".
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

import simdriver
from simdriver import simulated_driver  # noqa: F401 (a fixture)
from conftest import FIXTURES

pytestmark = pytest.mark.slow

MACHINES = FIXTURES / "machines"

# Nothing is preloaded: the import path decides in its loader, not under CPython's import lock, and imports
# ctypes in the importing thread, so a cold GPU probe never waits on the lock (test_cold_probe_is_not_stalled).
PRELOAD = ""
PROBE = """
import json, time
t0 = time.perf_counter()
import fatdemo
took = time.perf_counter() - t0
import fatdispatch
rec = fatdispatch.loaded("fatdemo._core")
sel = rec.selection
print(json.dumps({"variant": fatdemo.variant(), "import_s": took, "attempts": list(rec.attempts),
                  "reasons": {c.variant.name: c.reason for c in sel.candidates}, "notes": list(sel.notes),
                  "gpu_reason": sel.hardware.gpu.reason, "gpu_source": sel.hardware.gpu.source,
                  "gpus": [[g.name, g.uuid, list(g.compute_capability), list(g.mig_uuids)]
                           for g in sel.hardware.gpu.devices]}))
"""


@pytest.fixture
def sim(simulated_driver: Path) -> Path:
    return simulated_driver


def machine(name: str) -> dict[str, Any]:
    return dict(json.loads((MACHINES / f"{name}.json").read_text()))


def best_cpu() -> str:
    from fatdispatch._cpu import probe_cpu

    level = probe_cpu().x86_64_level or 1
    return "baseline" if level == 1 else f"x86-64-v{level}"


def import_on(desc: dict[str, Any], py: Path, env: dict[str, str], code: str = PRELOAD + PROBE,
              timeout: float = 60) -> dict[str, Any]:
    proc = simdriver.run_on_machine(desc, [str(py), "-c", code], env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture
def env(clean_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A fresh per-user cache for each test: the GPU probe really asks the simulated NVML."""
    return dict(clean_env, XDG_CACHE_HOME=str(tmp_path / "cache"))


def test_machines_say_where_they_come_from() -> None:
    for path in sorted(MACHINES.glob("*.json")):
        desc = json.loads(path.read_text())
        assert desc["fatdispatch_machine"] == 1
        assert desc["provenance"].startswith(("written from specifications", "recorded on real hardware")), path


# machine, the pick, {build: a fragment of its reason}
CASES = [
    ("t4-driver580", "cuda-sm75", {"cuda-sm80": "compute capability 7.5"}),
    ("a100-mig-driver580", "cuda-sm80", {"cuda-sm86": "8.0"}),
    ("rtx3090-driver580", "cuda-sm86", {"cuda-sm80": "ranked below cuda-sm86"}),
    ("l4-driver580", "cuda-sm86", {"cuda-sm86": "compatible SASS", "cuda-sm90": "8.9"}),
    ("l4-driver575", "CPU", {"cuda-sm86": "CUDA 13.x needs driver >= 580", "cuda-ptx75": "12.9"}),
    ("h100-driver535", "CPU", {"cuda-sm90": "supports CUDA 12.2: update the NVIDIA driver (CUDA 13.x needs driver >= 580)"}),
    ("h100-driver580", "cuda-sm90", {"cuda-ptx75": "ranked below cuda-sm90"}),
    ("h200-driver580", "cuda-sm90", {"cuda-sm90": "exact SASS"}),
    ("b200-driver580", "cuda-ptx75", {"cuda-sm90": "compute capability 10.0", "cuda-ptx75": "PTX"}),
    ("b300-driver590", "cuda-ptx75", {"cuda-sm90": "compute capability 10.3"}),
    ("rtx5090-driver580", "cuda-ptx75", {"cuda-sm90": "compute capability 12.0"}),
    # Tegra: desktop SASS does not run on Orin; only PTX does (and only where the driver's CUDA covers it)
    ("orin-driver580", "cuda-ptx75", {"cuda-sm86": "compute capability 8.7", "cuda-sm80": "compute capability 8.7"}),
    ("orin-driver540", "CPU", {"cuda-sm86": "compute capability 8.7", "cuda-ptx75": "supports CUDA 12.6"}),
    ("mixed-t4-h100-driver580", "cuda-ptx75", {"cuda-sm90": "GPU 0 (Tesla T4"}),
    ("two-h100-driver580", "cuda-sm90", {}),
]


@pytest.mark.parametrize("name,pick,reasons", CASES, ids=[c[0] for c in CASES])
def test_pick_on_machine(sim: Path, demo_venv: Path, env: dict[str, str], name: str, pick: str,
                         reasons: dict[str, str]) -> None:
    desc = machine(name)
    out = import_on(desc, demo_venv, env)
    want = best_cpu() if pick == "CPU" else pick
    assert out["variant"] == want, out["reasons"]
    assert out["attempts"] == [] and out["gpu_reason"] is None and out["gpu_source"] == "nvml"
    for build, fragment in reasons.items():
        assert fragment in out["reasons"][build], (build, out["reasons"][build])
    # the real binding read what the simulated driver holds
    nv = desc["nvidia"]
    assert out["gpus"] == [[d["name"], d["uuid"], d["compute_capability"], [m["uuid"] for m in d.get("mig", [])]]
                           for d in nv["devices"]]


def test_second_import_reads_the_gpu_cache(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    desc = machine("h100-driver580")
    first = import_on(desc, demo_venv, env)
    second = import_on(desc, demo_venv, env)
    assert first["gpu_source"] == "nvml" and second["gpu_source"] == "cache"
    assert first["variant"] == second["variant"] == "cuda-sm90"


@pytest.mark.parametrize("cvd,pick", [
    ("GPU-5eb07142", "cuda-sm90"),           # the H100 by a UUID prefix
    ("GPU-1b7c3f2e", "cuda-sm75"),           # the T4
    ("GPU-5eb07142,GPU-5eb071", "CPU"),      # the H100 named twice by two spellings: CUDA shows none
    ("+1", "cuda-ptx75"),                    # strtoul reads +1; with mixed models the index may be either GPU
])
def test_cuda_visible_devices_through_the_import(sim: Path, demo_venv: Path, env: dict[str, str], cvd: str,
                                                 pick: str) -> None:
    out = import_on(machine("mixed-t4-h100-driver580"), demo_venv, dict(env, CUDA_VISIBLE_DEVICES=cvd))
    assert out["variant"] == (best_cpu() if pick == "CPU" else pick), out["reasons"]


def test_mig_instance_selects_its_a100(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    desc = machine("a100-mig-driver580")
    mig = desc["nvidia"]["devices"][0]["mig"][1]["uuid"]
    out = import_on(desc, demo_venv, dict(env, CUDA_VISIBLE_DEVICES=mig))
    assert out["variant"] == "cuda-sm80"
    out = import_on(desc, demo_venv, dict(env, CUDA_VISIBLE_DEVICES="MIG-5e1f0a2b"))  # both instances: ambiguous
    assert out["variant"] == best_cpu() and "hides every GPU" in " ".join(out["notes"])


def _with(name: str, **nvidia: Any) -> dict[str, Any]:
    desc = copy.deepcopy(machine(name))
    desc["nvidia"].update(nvidia)
    return desc


def test_no_driver(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    desc = machine("h100-driver580")
    desc["nvidia"] = None
    out = import_on(desc, demo_venv, env)
    assert out["variant"] == best_cpu() and "/proc/driver/nvidia/version is missing" in out["gpu_reason"]


def test_driver_without_nvml_library(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    out = import_on(_with("h100-driver580", nvml=False), demo_venv, env)
    assert out["variant"] == best_cpu() and "LibraryNotFound" in out["gpu_reason"]


def test_nvml_without_libcuda(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    """A container with NVIDIA_DRIVER_CAPABILITIES=utility: NVML answers, libcuda.so.1 is absent, so
    nvmlSystemGetCudaDriverVersion_v2 fails with LibraryNotFound (as NVIDIA's header documents)."""
    out = import_on(_with("h100-driver580", libcuda=False), demo_venv, env)
    assert out["variant"] == best_cpu() and out["gpus"]  # the GPU is listed, and why CUDA cannot use it
    assert "the CUDA driver library libcuda.so.1 is missing" in out["gpu_reason"], out["gpu_reason"]


# Every nvmlReturn_t REFERENCE.md lists, each injected into a call the probe makes.
ERRORS = [
    ("nvmlInit", 1), ("nvmlDeviceGetCount", 2), ("nvmlDeviceGetCudaComputeCapability", 3), ("nvmlInit", 4),
    ("nvmlDeviceGetHandleByIndex", 6), ("nvmlInit", 9), ("nvmlSystemGetDriverVersion", 10), ("nvmlInit", 12),
    ("nvmlSystemGetCudaDriverVersion", 13), ("nvmlDeviceGetCount", 15), ("nvmlInit", 18), ("nvmlDeviceGetUUID", 999),
]
NAMES = {1: "Uninitialized", 2: "InvalidArgument", 3: "NotSupported", 4: "NoPermission", 6: "NotFound",
         9: "DriverNotLoaded", 10: "Timeout", 12: "LibraryNotFound", 13: "FunctionNotFound", 15: "GpuIsLost",
         18: "LibRmVersionMismatch", 999: "Unknown"}


@pytest.mark.parametrize("call,code", ERRORS, ids=[f"{c}-{n}" for c, n in ERRORS])
def test_every_nvml_error(sim: Path, demo_venv: Path, env: dict[str, str], call: str, code: int) -> None:
    out = import_on(_with("h100-driver580", nvml_errors={call: code}), demo_venv, env)
    assert out["variant"] == best_cpu()
    assert f"NVML_ERROR_{NAMES[code]} ({code})" in out["gpu_reason"] and call in out["gpu_reason"], out["gpu_reason"]
    assert all("no usable NVIDIA GPU" in r for b, r in out["reasons"].items() if b.startswith("cuda-"))


def test_hung_nvml_is_bounded(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    """nvmlInit never returns: the import still finishes, in about the 5 s timeout, with the CPU build."""
    started = time.monotonic()
    out = import_on(_with("h100-driver580", nvml_hang="nvmlInit_v2"), demo_venv, env, timeout=30)
    took = time.monotonic() - started
    assert out["variant"] == best_cpu() and "did not answer within 5 s" in out["gpu_reason"]
    assert 4.5 <= out["import_s"] <= 8 and took < 12, (out["import_s"], took)


def test_cold_probe_is_not_stalled(sim: Path, demo_venv: Path, env: dict[str, str]) -> None:
    out = import_on(machine("h100-driver580"), demo_venv, env, code=PROBE)
    assert out["variant"] == "cuda-sm90", out["gpu_reason"]
    assert out["import_s"] < 1.5  # not the 5 s NVML timeout (a bound for a loaded CI machine, not a benchmark)


HIT = ("import json, sys, fatdemo\n"
       "print(json.dumps({'variant': fatdemo.variant(), 'hit': 'fatdispatch' not in sys.modules}))\n")


def test_a_gpu_host_gets_its_pick_from_the_cache_until_the_gpu_facts_change(sim: Path, demo_venv: Path,
                                                                           env: dict[str, str]) -> None:
    """On a host with an NVIDIA driver the pick cache answers too, keyed on what the GPU facts rest on: the
    boot, the driver version, the GPU set and CUDA's visibility variables (changing one is a miss)."""
    h200 = machine("h200-driver580")
    first = import_on(h200, demo_venv, env, code=HIT)
    again = import_on(h200, demo_venv, env, code=HIT)
    assert first == {"variant": "cuda-sm90", "hit": False} and again == {"variant": "cuda-sm90", "hit": True}
    hidden = import_on(h200, demo_venv, dict(env, CUDA_VISIBLE_DEVICES=""), code=HIT)
    assert hidden == {"variant": best_cpu(), "hit": False}
    assert import_on(h200, demo_venv, dict(env, CUDA_VISIBLE_DEVICES=""), code=HIT)["hit"]
    newer = _with("h200-driver580", driver_version="590.10.01", cuda_driver_version=13010)
    assert import_on(newer, demo_venv, env, code=HIT) == {"variant": "cuda-sm90", "hit": False}
    assert import_on(h200, demo_venv, env, code=HIT)["hit"] is False  # the other driver's pick replaced it


def test_a_visibility_value_too_long_for_the_key_is_never_keyed_as_unset(sim: Path, demo_venv: Path,
                                                                        env: dict[str, str]) -> None:
    """A CUDA_VISIBLE_DEVICES longer than the pick key holds (here one GPU named 600 times, which hides every
    GPU) gets no key and so no pick: it is decided afresh each time, never served the pick made with every
    GPU visible (before: such a value was keyed as unset, and the H200's cuda-sm90 pick answered)."""
    h200 = machine("h200-driver580")
    import_on(h200, demo_venv, env, code=HIT)
    assert import_on(h200, demo_venv, env, code=HIT) == {"variant": "cuda-sm90", "hit": True}
    long_value = dict(env, CUDA_VISIBLE_DEVICES="0," * 600)
    for _ in range(2):
        assert import_on(h200, demo_venv, long_value, code=HIT) == {"variant": best_cpu(), "hit": False}


# ---------------------------------------------------------------- family and arch-specific targets through the import

FAMILY_TARGETS = ["sm_90", "sm_90a", "sm_100f", "sm_100a", "compute_100f", "compute_90"]


@pytest.fixture(scope="session")
def family_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fatdemo rebuilt with family (sm_100f, compute_100f) and arch-specific (sm_90a, sm_100a) targets and only the
    baseline CPU build, installed in a fresh virtual environment."""
    import os
    import re
    import shutil
    import sys

    from conftest import EXAMPLE, fresh_venv, run

    if shutil.which("nvcc") is None or os.environ.get("FATDISPATCH_SKIP_CUDA"):
        pytest.skip("nvcc is missing (or FATDISPATCH_SKIP_CUDA is set): no CUDA builds to pick from")
    work = tmp_path_factory.mktemp("family")
    src = work / "fatdemo"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.variants", "tests"))
    text = (src / "pyproject.toml").read_text()
    text = re.sub(r"(?m)^variants = .*$", 'variants = ["baseline"]', text)
    text = re.sub(r"(?m)^cuda-targets = .*$", "cuda-targets = " + json.dumps(FAMILY_TARGETS), text)
    (src / "pyproject.toml").write_text(text)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"),
         str(src)], env=dict(os.environ, PIP_NO_INDEX="1"))
    return fresh_venv(work / "venv", wheels["fatdispatch"], next((work / "dist").glob("fatdemo-*.whl")))


FAMILY_CASES = [
    ("h200-driver580", "cuda-sm90a", {"cuda-sm90": "ranked below", "cuda-sm100f": "compute capability 9.0"}),
    ("b200-driver580", "cuda-sm100a", {"cuda-sm100f": "ranked below cuda-sm100a", "cuda-ptx100f": "PTX"}),
    ("b300-driver590", "cuda-sm100f", {"cuda-sm100a": "compute capability 10.3", "cuda-ptx100f": "ranked below"}),
    # compute_100f is family PTX: not for 12.0; plain compute_90 is forward-compatible
    ("rtx5090-driver580", "cuda-ptx90", {"cuda-ptx100f": "compute capability 12.0", "cuda-sm100f": "12.0"}),
]


@pytest.mark.parametrize("name,pick,reasons", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_family_and_arch_specific_targets(sim: Path, family_venv: Path, env: dict[str, str], name: str, pick: str,
                                          reasons: dict[str, str]) -> None:
    out = import_on(machine(name), family_venv, env)
    assert out["variant"] == pick, out["reasons"]
    for build, fragment in reasons.items():
        assert fragment in out["reasons"][build], (build, out["reasons"][build])
