"""python -m fatdispatch capture / explain --machine: this machine's facts, and NVIDIA's answers on described ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import simdriver
from simdriver import simulated_driver  # noqa: F401 (a fixture)
from conftest import FIXTURES
from fatdispatch import _machine

EXPLAIN = FIXTURES / "explain"


def cli(*args: str, py: str | Path = sys.executable, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(py), "-m", "fatdispatch", *args], capture_output=True, text=True, cwd="/")
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_capture_this_machine(tmp_path: Path) -> None:
    import _fatdispatch

    from fatdispatch._cpu import probe_cpu

    out = tmp_path / "here.json"
    cli("capture", "-o", str(out))
    desc = json.loads(out.read_text())
    assert desc["fatdispatch_machine"] == 1 and desc["provenance"].startswith("recorded on real hardware")
    cpu = probe_cpu()
    assert desc["cpu"]["arch"] == cpu.arch
    if cpu.arch == "x86_64":
        raw = {k: list(v) if isinstance(v, tuple) else v for k, v in _fatdispatch.x86().items()}
        for words in (raw, desc["cpu"]["raw"]):  # leaf 1 EBX 31-24: the APIC id of whichever core ran CPUID
            words["1"][1] &= 0x00FFFFFF
        assert desc["cpu"]["raw"] == raw
    # the description replays to the same CPU, decoded from the raw words
    assert _machine.cpu_from_machine(desc).features == cpu.features
    if not Path("/proc/driver/nvidia/version").exists():
        assert desc["nvidia"] is None


def test_capture_on_a_simulated_gpu_machine_round_trips(simulated_driver: Path) -> None:
    """capture on the simulated A100 (MIG) records what the driver holds, and that record, fed back to the
    simulated driver, gives the binding the same answer."""
    desc = json.loads((FIXTURES / "machines" / "a100-mig-driver580.json").read_text())
    proc = simdriver.run_on_machine(desc, [sys.executable, "-m", "fatdispatch", "capture"])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    nv, want = got["nvidia"], desc["nvidia"]
    assert nv["driver_version"] == want["driver_version"] and nv["cuda_driver_version"] == want["cuda_driver_version"]
    assert [(d["name"], d["uuid"], d["compute_capability"], [m["uuid"] for m in d["mig"]]) for d in nv["devices"]] \
        == [(d["name"], d["uuid"], d["compute_capability"], [m["uuid"] for m in d["mig"]]) for d in want["devices"]]
    assert nv["devices"][0]["pci_bus_id"] == "0000:07:00.0" and "580.65.06" in nv["proc_version"]
    assert _machine.gpus_from_machine(got).devices == _machine.gpus_from_machine(desc).devices
    again = simdriver.run_on_machine(got, [sys.executable, "-m", "fatdispatch", "capture"])
    assert json.loads(again.stdout)["nvidia"]["devices"] == nv["devices"]


def explain(pkg: str, machine: str) -> Any:
    desc = _machine.load_machine(str(EXPLAIN / f"{machine}.json"))
    hw, sels = _machine.explain_on_machine(str(EXPLAIN / pkg / "_core.variants"), desc)
    assert len(sels) == 1
    return sels[0]


def test_orin_runs_only_its_own_sass_or_ptx() -> None:
    """[PG] Tegra: no SASS compatibility with desktop parts; only sm_87 or PTX runs on Orin (8.7)."""
    sel = explain("orinpkg", "orin")
    assert sel.chosen == "cuda-sm87" and sel.order[1] == "cuda-ptx80"
    assert "compute capability 8.7" in sel.candidate("cuda-ampere").reason


def test_cc_10_3_takes_the_family_build() -> None:
    """[PG] sm_100f and compute_100f cover 10.3; sm_100a is 10.0 only; compute_120f is another family's."""
    sel = explain("blackwellpkg", "b300-cc103")
    assert sel.chosen == "cuda-sm100f" and sel.candidate("cuda-ptx100f").usable
    assert not sel.candidate("cuda-sm100a").usable and not sel.candidate("cuda-ptx120f").usable


def test_13_1_build_on_a_13_0_driver() -> None:
    """[CG] minor-version compatibility: the 13.1 SASS runs on the 13.0 driver, its PTX does not."""
    proc = cli("explain", str(EXPLAIN / "cuda131pkg" / "_core.variants"), "--machine", str(EXPLAIN / "h100-cuda130.json"))
    assert "cuda131pkg._core -> cuda-sm90" in proc.stdout
    assert "minor-version compatibility" in proc.stdout and "cannot be JIT-compiled" in proc.stdout
    sel = explain("cuda131pkg", "h100-cuda130")
    assert sel.chosen == "cuda-sm90" and not sel.candidate("cuda-ptx90").usable


def test_exact_9_0_prefers_sm_90a() -> None:
    """[PG] on the exact capability sm_90a carries more than sm_90: ranked first whatever the manifest order."""
    proc = cli("explain", str(EXPLAIN / "hopperpkg" / "_core.variants"), "--machine", str(EXPLAIN / "h100-cuda130.json"),
               "--json")
    data = json.loads(proc.stdout)
    assert data["modules"][0]["selected"] == "cuda-sm90a" and data["modules"][0]["order"][1] == "cuda-sm90"


def test_bad_machine_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"cpu": {}}')
    proc = cli("explain", str(EXPLAIN / "hopperpkg" / "_core.variants"), "--machine", str(bad), check=False)
    assert proc.returncode == 1 and "not a fatdispatch machine description" in proc.stderr


@pytest.mark.slow
def test_explain_a_wheel_and_an_installed_module(wheels: dict[str, Path], demo_venv: Path) -> None:
    h200 = str(FIXTURES / "machines" / "h200-driver580.json")
    out = cli("explain", str(wheels["fatdemo"]), "--machine", h200).stdout
    assert "fatdemo._core -> cuda-sm90" in out
    out = cli("explain", "fatdemo", "--machine", str(FIXTURES / "machines" / "orin-driver580.json"), "--json",
              py=demo_venv).stdout
    mod = json.loads(out)["modules"][0]
    assert mod["selected"] is None  # the x86-64 wheel on an aarch64 Orin: nothing runs, and each build says why
    assert all("built for x86_64; this machine is aarch64" in c["reason"] for c in mod["candidates"])
