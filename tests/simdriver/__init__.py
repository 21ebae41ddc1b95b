"""A simulated NVIDIA driver for tests: ``libnvidia-ml.so.1`` and ``libcuda.so.1`` built from C here, driven by a
machine description (the format ``python -m fatdispatch capture`` writes; see ``fatdispatch._machine``).

A test process finds the simulated driver exactly as it would find a real one:

* the libraries through the library search path (``LD_LIBRARY_PATH`` names a private folder holding links to
  them and the machine's ``machine.json``, which each library finds next to itself with ``dladdr``);
* the driver's files (``/proc/driver/nvidia/version``, ``/proc/driver/nvidia/gpus/<pci>``) in a private mount
  namespace (``unshare --mount`` with a tmpfs over ``/proc/driver``), as root.

Nothing in fatdispatch names or reads any of this: no variable points at a file to load.

``run_on_machine(machine, argv, env)`` runs one command on a described machine; ``build_libraries()`` compiles
the two libraries with gcc once (cached by a hash of the sources and NVIDIA's ``nvml.h``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCES = ("sim_machine.h", "nvml_sim.c", "cuda_sim.c")
CACHE = ROOT / "build" / "simdriver"


class Unavailable(Exception):
    """The simulated driver cannot be used here (the reason names the missing tool or permission)."""


def nvml_header() -> Path:
    """NVIDIA's ``nvml.h`` from the ``nvidia-nvml-dev`` wheel installed in this interpreter."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for candidate in sorted(Path(root).glob("*/include/nvml.h")) + [Path(root) / "include" / "nvml.h"]:
            if candidate.is_file():
                return candidate
    raise Unavailable("NVIDIA's nvml.h is missing: pip install nvidia-nvml-dev (build_tools/setup_env.sh does)")


def build_libraries() -> Path:
    """Compile ``libnvidia-ml.so.1`` and ``libcuda.so.1``; the folder holding them (reused while the sources,
    ``nvml.h`` and gcc are unchanged)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc is missing: the simulated NVIDIA driver is compiled from C")
    header = nvml_header()
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((HERE / name).read_bytes())
    digest.update(header.read_bytes())
    digest.update(subprocess.run([gcc, "--version"], capture_output=True, check=True).stdout)
    out = CACHE / digest.hexdigest()[:16]
    if (out / "libnvidia-ml.so.1").is_file() and (out / "libcuda.so.1").is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=_mkdir(CACHE)))
    flags = ["-shared", "-fPIC", "-O1", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-I", str(header.parent), "-I", str(HERE)]
    for source, lib, soname in (("nvml_sim.c", "libnvidia-ml.so.1", "libnvidia-ml.so.1"),
                                ("cuda_sim.c", "libcuda.so.1", "libcuda.so.1")):
        proc = subprocess.run([gcc, *flags, f"-Wl,-soname,{soname}", "-o", str(tmp / lib), str(HERE / source), "-ldl"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"compiling {source} failed:\n{proc.stderr}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process built the same sources first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def load(machine: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(machine, (str, Path)):
        return dict(json.loads(Path(machine).read_text()))
    return dict(machine)


def proc_version_text(nvidia: Mapping[str, Any]) -> str:
    """What ``/proc/driver/nvidia/version`` holds for a driver (the machine's own text when it recorded one)."""
    if nvidia.get("proc_version"):
        return str(nvidia["proc_version"])
    return (f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {nvidia.get('driver_version', '')}  "
            "(simulated by fatdispatch's tests)\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


def pci_dir_name(device: Mapping[str, Any], index: int) -> str:
    """``/proc/driver/nvidia/gpus/`` names a GPU by its PCI address in lower case, 4-digit domain."""
    bus = str(device.get("pci_bus_id") or f"00000000:{index + 1:02X}:00.0")
    domain, _, rest = bus.partition(":")
    return f"{int(domain, 16):04x}:{rest.lower()}"


def prepare(machine: Mapping[str, Any], where: Path) -> tuple[Path, Path | None]:
    """Lay out ``machine`` under ``where``: the library folder and the ``/proc/driver`` tree (None: no driver)."""
    libs = build_libraries()
    libdir = _mkdir(where / "lib")
    (libdir / "machine.json").write_text(json.dumps(machine))
    nvidia = machine.get("nvidia")
    if not nvidia:
        return libdir, None
    if nvidia.get("nvml", True):
        os.symlink(libs / "libnvidia-ml.so.1", libdir / "libnvidia-ml.so.1")
    if nvidia.get("libcuda", True):
        os.symlink(libs / "libcuda.so.1", libdir / "libcuda.so.1")
    proc = _mkdir(where / "proc-driver" / "nvidia" / "gpus")
    (proc.parent / "version").write_text(proc_version_text(nvidia))
    for i, dev in enumerate(nvidia.get("devices", [])):
        _mkdir(proc / pci_dir_name(dev, i))
    return libdir, where / "proc-driver"


def namespace_problem() -> str | None:
    """Why a private mount namespace cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return "the simulated NVIDIA driver needs Linux mount namespaces"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here ({probe.stderr.strip() or probe.returncode}); needs root"
    return None


# The command run inside the namespace: hide the host's /proc/driver, show the machine's, then exec argv.
_INSIDE = """set -e
mount -t tmpfs -o size=1m,mode=0555 simdriver /proc/driver
if [ -n "$SIMDRIVER_PROC" ]; then cp -R "$SIMDRIVER_PROC"/. /proc/driver/; fi
unset SIMDRIVER_PROC
exec "$@"
"""


def run_on_machine(machine: Mapping[str, Any] | str | Path, argv: Sequence[str], env: Mapping[str, str] | None = None,
                   *, timeout: float = 120, cwd: str | Path | None = "/",
                   workdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on the described machine; its stdout/stderr as text.

    ``env`` is the whole environment (default: this process's); the simulated library folder is put first on
    ``LD_LIBRARY_PATH``. Raises :class:`Unavailable` where no private mount namespace can be made.
    """
    problem = namespace_problem()
    if problem:
        raise Unavailable(problem)
    desc = load(machine)
    own = workdir is None
    where = Path(tempfile.mkdtemp(prefix="simmachine-")) if own else workdir
    assert where is not None
    try:
        libdir, proc = prepare(desc, where)
        return run_prepared(libdir, proc, argv, env, timeout=timeout, cwd=cwd)
    finally:
        if own:
            shutil.rmtree(where, ignore_errors=True)


def run_prepared(libdir: Path, proc: Path | None, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                 timeout: float = 120, cwd: str | Path | None = "/") -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on a machine laid out once by :func:`prepare` (many runs on one machine: the benchmark)."""
    full = dict(os.environ if env is None else env)
    full["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), full.get("LD_LIBRARY_PATH", "")) if p)
    full["SIMDRIVER_PROC"] = str(proc) if proc else ""
    cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _INSIDE, "simdriver", *argv]
    return subprocess.run(cmd, env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _session_fixture() -> Any:
    import pytest

    @pytest.fixture(scope="session")
    def simulated_driver() -> Path:
        """The simulated driver's libraries, built once per session (skips, naming what is missing, where the
        libraries cannot be built or no private mount namespace can be made)."""
        try:
            problem = namespace_problem()
            if problem:
                pytest.skip(problem)
            return build_libraries()
        except Unavailable as exc:
            pytest.skip(str(exc))

    return simulated_driver


# Import it into a test module (``from simdriver import simulated_driver``) to use it as a fixture.
simulated_driver = _session_fixture()
