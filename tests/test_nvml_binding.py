"""fatdispatch's own ctypes NVML binding against NVIDIA's (nvidia-ml-py's pynvml), both on the simulated driver:
the same devices, names, UUIDs, compute capabilities, MIG instances, driver and CUDA versions, and errors."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import simdriver
from simdriver import simulated_driver  # noqa: F401 (a fixture)
from conftest import FIXTURES

MACHINES = sorted(p.stem for p in (FIXTURES / "machines").glob("*.json"))

BOTH = r"""
import json, sys
from fatdispatch import _nvml
g = _nvml.query_nvml()
ours = {"reason": g.reason, "driver": g.driver_version,
        "cuda": list(g.cuda_driver_version) if g.cuda_driver_version else None,
        "devices": [[d.index, d.name, d.uuid, list(d.compute_capability), list(d.mig_uuids)] for d in g.devices]}
import pynvml
theirs = {}
try:
    pynvml.nvmlInit()
    cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    theirs["driver"] = pynvml.nvmlSystemGetDriverVersion()
    theirs["cuda"] = [cuda // 1000, cuda % 1000 // 10]
    devices = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        migs = []
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(h)
        except pynvml.NVMLError_NotSupported:
            current = 0
        if current == pynvml.NVML_DEVICE_MIG_ENABLE:
            for k in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
                except pynvml.NVMLError_NotFound:
                    continue
                parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
                assert pynvml.nvmlDeviceGetUUID(parent) == pynvml.nvmlDeviceGetUUID(h)
                migs.append(pynvml.nvmlDeviceGetUUID(m))
        devices.append([i, pynvml.nvmlDeviceGetName(h), pynvml.nvmlDeviceGetUUID(h),
                        list(pynvml.nvmlDeviceGetCudaComputeCapability(h)), migs])
    theirs["devices"] = devices
    pynvml.nvmlShutdown()
except pynvml.NVMLError as exc:
    theirs["error"] = exc.value
print(json.dumps({"ours": ours, "theirs": theirs}))
"""


@pytest.fixture
def sim(simulated_driver: Path) -> Path:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        pytest.skip("nvidia-ml-py (pynvml) is missing: pip install nvidia-ml-py (build_tools/setup_env.sh does)")
    return simulated_driver


def both(desc: dict[str, Any]) -> dict[str, Any]:
    proc = simdriver.run_on_machine(desc, [sys.executable, "-c", BOTH], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize("name", MACHINES)
def test_same_answer_as_pynvml(sim: Path, name: str) -> None:
    desc = json.loads((FIXTURES / "machines" / f"{name}.json").read_text())
    out = both(desc)
    ours, theirs = out["ours"], out["theirs"]
    assert "error" not in theirs and ours["reason"] is None
    assert ours["driver"] == theirs["driver"] == desc["nvidia"]["driver_version"]
    assert ours["cuda"] == theirs["cuda"]
    assert ours["devices"] == theirs["devices"]
    assert len(ours["devices"]) == len(desc["nvidia"]["devices"])
    assert any(d[4] for d in ours["devices"]) == any(d.get("mig") for d in desc["nvidia"]["devices"])
    # explain --machine reads the same description without a driver: it must see what the binding saw
    from fatdispatch._machine import gpus_from_machine

    g = gpus_from_machine(desc)
    assert [[d.index, d.name, d.uuid, list(d.compute_capability), list(d.mig_uuids)] for d in g.devices] == ours["devices"]
    assert list(g.cuda_driver_version or ()) == ours["cuda"] and g.driver_version == ours["driver"]


@pytest.mark.parametrize("call,code", [("nvmlInit", 9), ("nvmlInit", 18), ("nvmlDeviceGetCount", 15),
                                       ("nvmlDeviceGetUUID", 999), ("nvmlSystemGetCudaDriverVersion", 13)])
def test_same_error_as_pynvml(sim: Path, call: str, code: int) -> None:
    desc = copy.deepcopy(json.loads((FIXTURES / "machines" / "h100-driver580.json").read_text()))
    desc["nvidia"]["nvml_errors"] = {call: code}
    out = both(desc)
    assert out["theirs"]["error"] == code
    assert out["ours"]["devices"] == [] and f"({code})" in out["ours"]["reason"]
    from fatdispatch._machine import gpus_from_machine

    assert gpus_from_machine(desc).reason == out["ours"]["reason"]


def test_no_libcuda_is_library_not_found_for_both(sim: Path) -> None:
    desc = copy.deepcopy(json.loads((FIXTURES / "machines" / "h100-driver580.json").read_text()))
    desc["nvidia"]["libcuda"] = False
    out = both(desc)
    assert out["theirs"]["error"] == 12  # NVML_ERROR_LIBRARY_NOT_FOUND from nvmlSystemGetCudaDriverVersion_v2
    # fatdispatch still lists the GPU and says why CUDA cannot use it
    assert len(out["ours"]["devices"]) == 1 and "libcuda.so.1 is missing" in out["ours"]["reason"]
    from fatdispatch._machine import gpus_from_machine

    assert gpus_from_machine(desc).reason == out["ours"]["reason"]
