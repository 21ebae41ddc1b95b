"""Shared fixtures: recorded machines, a fake NVML, and the example's wheels (built once per session)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from fatdispatch import _cpu, _nvml
from fatdispatch import _records as _gpu
from fatdispatch._manifest import parse_manifest
from fatdispatch._records import Hardware, Manifest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = ROOT / "examples" / "fatdemo"


def raw_fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "cpu" / f"{name}.json").read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data["raw"].items()}


def cpu_fixture(name: str) -> _cpu.CPU:
    return _cpu.x86_from_cpuid(raw_fixture(name), "x86_64", "recorded")


CPU_FIXTURES = sorted(Path(p).stem for p in glob.glob(str(FIXTURES / "cpu" / "*.json")))
GPU_FIXTURES = sorted(Path(p).stem for p in glob.glob(str(FIXTURES / "gpu" / "*.json")))


class FakeNvml:
    """Replays a recorded NVML answer; ``fail`` maps a method name to an NVML error code."""

    def __init__(self, answer: dict[str, Any], fail: dict[str, int] | None = None, hang: float = 0.0) -> None:
        self.answer = answer
        self.fail = fail or {}
        self.hang = hang

    def _check(self, call: str) -> None:
        if call in self.fail:
            raise _nvml.NvmlError(self.fail[call], call)

    def init(self) -> None:
        if self.hang:
            import time

            time.sleep(self.hang)
        self._check("init")

    def shutdown(self) -> None:
        self._check("shutdown")

    def driver_version(self) -> str:
        self._check("driver_version")
        return str(self.answer["driver_version"])

    def cuda_driver_version(self) -> int:
        self._check("cuda_driver_version")
        return int(self.answer["cuda_driver_version"])

    def device_count(self) -> int:
        self._check("device_count")
        return len(self.answer["devices"])

    def handle(self, i: int) -> int:
        self._check("handle")
        return i

    def compute_capability(self, h: int) -> tuple[int, int]:
        self._check("compute_capability")
        cc = self.answer["devices"][h]["compute_capability"]
        return cc[0], cc[1]

    def uuid(self, h: int) -> str:
        self._check("uuid")
        return str(self.answer["devices"][h]["uuid"])

    def name(self, h: int) -> str:
        return str(self.answer["devices"][h]["name"])

    def mig_uuids(self, h: int) -> list[str]:
        return list(self.answer["devices"][h]["mig_uuids"])


def gpu_fixture(name: str, libcuda: bool = True) -> _gpu.GPUs:
    answer = json.loads((FIXTURES / "gpu" / f"{name}.json").read_text())
    return _nvml.query_nvml(lambda: FakeNvml(answer), lambda: libcuda)


def machine(cpu: str = "host-sapphirerapids-vm", gpu: str | None = None, libcuda: bool = True) -> Hardware:
    g = gpu_fixture(gpu, libcuda) if gpu else _gpu.no_gpus("no NVIDIA driver is installed")
    return Hardware(cpu=cpu_fixture(cpu), gpu=g)


def demo_manifest() -> Manifest:
    """A manifest shaped like the example's: four CPU levels, four SASS builds and a PTX build."""
    from fatdispatch.build._catalog import cpu_catalog

    cat = cpu_catalog("x86_64")
    variants = []
    for name in ("baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"):
        v = cat[name]
        variants.append({"name": name, "kind": "cpu", "file": f"{name}/_core", "arch": "x86_64",
                         "requires": {"features": list(v.features), "x86_64_level": v.x86_64_level},
                         "properties": list(v.properties)})
    base = cat["baseline"]
    for name, sass, ptx in (("cuda-sm75", ["75"], []), ("cuda-sm80", ["80"], []), ("cuda-sm86", ["86"], []),
                            ("cuda-sm90", ["90"], []), ("cuda-ptx75", [], ["75"])):
        variants.append({"name": name, "kind": "cuda", "file": f"{name}/_core", "arch": "x86_64",
                         "requires": {"features": list(base.features), "x86_64_level": 1,
                                      "cuda": {"sass": sass, "ptx": ptx, "runtime": [13, 0]}}})
    return parse_manifest({"schema": 1, "module": "fatdemo._core", "variants": variants}, "<demo>")


# ---------------------------------------------------------------- built artefacts


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fatdispatch's and fatdemo's wheels, built from this checkout (reused from build/test-wheels when fresh)."""
    out = tmp_path_factory.mktemp("wheels")
    env = dict(os.environ, PIP_NO_INDEX="1")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        env=env)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(EXAMPLE)], env=env)
    return {"fatdispatch": next(out.glob("fatdispatch-*.whl")), "fatdemo": next(out.glob("fatdemo-*.whl")),
            "dir": out}


def fresh_venv(where: Path, *wheel_files: Path) -> Path:
    """A new virtual environment at ``where`` holding only ``wheel_files`` (installed offline); its python."""
    run([sys.executable, "-m", "venv", "--without-pip", str(where)])
    py = where / "bin" / "python"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site_packages(py)),
         *map(str, wheel_files)])
    return py


@pytest.fixture(scope="session")
def demo_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only fatdispatch and fatdemo installed from their wheels."""
    return fresh_venv(tmp_path_factory.mktemp("venv") / "v", wheels["fatdispatch"], wheels["fatdemo"])


def site_packages(py: Path) -> Path:
    return Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' own per-user cache folder (XDG_CACHE_HOME), shared by the session: most imports after the
    first of each installed copy are answered by the pick cache, the path users take."""
    return tmp_path_factory.mktemp("cache-home")


@pytest.fixture
def clean_env(cache_home: Path) -> Iterator[dict[str, str]]:
    """os.environ without any FATDISPATCH_* or CUDA_* variables, for subprocesses, with the tests' cache folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FATDISPATCH_", "CUDA_VISIBLE", "CUDA_DEVICE"))}
    env["XDG_CACHE_HOME"] = str(cache_home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    yield env


def qemu() -> str | None:
    return shutil.which("qemu-x86_64")
