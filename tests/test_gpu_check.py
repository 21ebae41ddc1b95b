"""benchmarks/gpu_check.py, the script for a real GPU: on a machine without one it says "no GPU" and exits 0; on the
simulated H200 it runs every step and records the (simulated) NVML answer, failing where the stub driver cannot
run kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simdriver
from simdriver import simulated_driver  # noqa: F401 (a fixture)
from conftest import FIXTURES, ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_no_gpu_here_exits_0() -> None:
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("no GPU:"), proc


def test_no_gpu_on_a_machine_without_a_driver() -> None:
    problem = simdriver.namespace_problem()
    if problem:
        pytest.skip(problem)
    desc = json.loads((FIXTURES / "machines" / "h200-driver580.json").read_text())
    desc["nvidia"] = None
    proc = simdriver.run_on_machine(desc, [sys.executable, str(SCRIPT)], timeout=60)
    assert proc.returncode == 0 and "no GPU: no NVIDIA driver" in proc.stdout, proc


@pytest.mark.slow
def test_dry_run_on_the_simulated_h200(simulated_driver: Path, wheels: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = simdriver.run_on_machine(FIXTURES / "machines" / "h200-driver580.json",
                                    [sys.executable, str(SCRIPT), "--wheels", str(wheels["dir"]), "--runs", "1",
                                     "--mib", "1", "--quick", "--out", str(out)], timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the stub libcuda runs no kernel
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert report["gpu0_compute_capability"] == [9, 0]
    assert steps["capture"]["nvidia"]["devices"][0]["name"] == "NVIDIA H200"
    assert json.loads(Path(steps["capture"]["fixture"]).read_text())["provenance"].startswith("recorded on real")
    picked = steps["pick_and_results"]
    assert picked["expected_pick"] == picked["pick"] == "cuda-sm90" and picked["pick_ok"]  # no 5 s NVML stall
    assert not picked["results_equal"] and "not supported" in picked["kernel_error"]  # the stub runs no kernel
    assert "pick_and_results" in report["failed"]
    assert steps["timings"]["nvml_probe_median_s"] > 0 and "plain_median_s" in steps["timings"]
    assert "child_status" in steps["fork"] or "CUDA" in steps["fork"].get("error", "")
    assert "CUDA" in steps["throughput"]["error"]  # the stub driver refuses cudaMalloc, clearly
    assert "throughput" in report["failed"]
