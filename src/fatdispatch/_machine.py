"""Machine descriptions: ``python -m fatdispatch capture`` writes this machine's facts; ``python -m fatdispatch
explain TARGET --machine FILE`` shows what TARGET would pick on a described machine, and why not the others.

A description is one JSON object (the simulated NVIDIA driver in tests/simdriver reads the same format)::

    {"fatdispatch_machine": 1,
     "provenance": "recorded on real hardware ..." | "written from specifications ...",
     "description": "free text",
     "cpu": {"arch": "x86_64", "raw": {... the words _fatdispatch.x86() returns ...}}
            | {"arch": "aarch64", "hwcap": [AT_HWCAP, AT_HWCAP2]}
            | {"arch": ..., "features": [...], "x86_64_level": N},          (hand-written)
     "nvidia": null                                                         (no driver)
            | {"driver_version": "580.65.06", "cuda_driver_version": 13000,  (NVML's integer)
               "libcuda": true, "nvml": true, "proc_version": "...",
               "devices": [{"name", "uuid", "compute_capability": [9, 0], "pci_bus_id",
                            "mig_mode": 1 | 0 | null, "mig": [{"uuid", "gi", "ci"}]}],
               "nvml_errors": {"nvmlInit": 9}, "nvml_hang": "nvmlInit_v2",  (faults, for tests)
               "probe_reason": "why the GPU probe found nothing usable"},   (recorded where it failed)
     "env": {"CUDA_VISIBLE_DEVICES": "...", ...}}

The decision is the pure ``select`` over the machine's facts: nothing is probed or loaded for ``explain``.
"""

from __future__ import annotations

import os
import sys

from . import __version__
from ._cpu import x86_64_level, x86_from_cpuid
from ._errors import FatDispatchError
from ._manifest import read_manifest
from ._records import CPU, GPUs, Hardware, Manifest, Selection, no_gpus
from ._select import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

FORMAT = 1
# The environment a pick depends on (and two container variables that explain a missing libcuda).
RELEVANT_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")


class MachineError(FatDispatchError):
    """A machine description that cannot be read."""


# ---------------------------------------------------------------- capture (probes this machine)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None


def capture_cpu() -> dict[str, Any]:
    """The raw CPU words (x86: CPUID leaves and XCR0; aarch64: the auxv hwcaps), with the decoded result."""
    from ._cpu import native, probe_cpu

    cpu = probe_cpu()
    out: dict[str, Any] = {"arch": cpu.arch}
    mod = native()
    if cpu.arch == "x86_64" and mod is not None and hasattr(mod, "x86"):
        out["raw"] = _plain(mod.x86())
    elif cpu.arch == "aarch64" and mod is not None and hasattr(mod, "hwcaps"):
        out["hwcap"] = list(mod.hwcaps())
    out.update({"features": sorted(cpu.features), "x86_64_level": cpu.x86_64_level, "vendor": cpu.vendor,
                "source": cpu.source, "notes": list(cpu.notes)})
    return out


def capture_nvidia(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The driver and NVML's answer (asked now, not from the cache), or None without a driver."""
    import _fatdispatch

    present, _ = _fatdispatch.driver_present()
    if not present:
        return None
    import ctypes  # noqa: F401 - in this thread: the NVML worker imports nothing

    from . import _gpu, _nvml

    g = _gpu.query_with_timeout(_nvml.query_nvml)
    try:
        pci = sorted(os.listdir("/proc/driver/nvidia/gpus"))  # names only; NVML's order is PCI order too
    except OSError:
        pci = []
    devices = []
    for i, d in enumerate(g.devices):
        dev: dict[str, Any] = {"name": d.name, "uuid": d.uuid, "compute_capability": list(d.compute_capability)}
        if len(pci) == len(g.devices):
            dev["pci_bus_id"] = pci[i]
        if d.mig_uuids:
            dev["mig_mode"] = 1
            dev["mig"] = [{"uuid": m} for m in d.mig_uuids]
        devices.append(dev)
    cuda = g.cuda_driver_version
    out: dict[str, Any] = {"driver_version": g.driver_version,
                           "cuda_driver_version": cuda[0] * 1000 + cuda[1] * 10 if cuda else None,
                           "libcuda": g.libcuda, "devices": devices}
    proc = _read("/proc/driver/nvidia/version")
    if proc is not None:
        out["proc_version"] = proc
    if g.reason is not None:
        out["probe_reason"] = g.reason
    return out


def capture(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """This machine's facts as a description (see the module docstring)."""
    import time

    env = os.environ if env is None else env
    return {"fatdispatch_machine": FORMAT,
            "provenance": (f"recorded on real hardware by python -m fatdispatch capture (fatdispatch {__version__}, "
                           f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})"),
            "description": f"{os.uname().nodename if hasattr(os, 'uname') else ''}: Python {sys.version.split()[0]} "
                           f"on {sys.platform}",
            "cpu": capture_cpu(),
            "nvidia": capture_nvidia(env),
            "env": {k: v for k, v in sorted(env.items()) if k in RELEVANT_ENV or k.startswith("FATDISPATCH_")}}


# ---------------------------------------------------------------- reading a description (pure)


def load_machine(path: str) -> dict[str, Any]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise MachineError(f"cannot read machine description {path}: {exc}") from None
    check_machine(data, path)
    return dict(data)


def check_machine(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("fatdispatch_machine") != FORMAT:
        raise MachineError(f"{where} is not a fatdispatch machine description (needs \"fatdispatch_machine\": "
                           f"{FORMAT}; python -m fatdispatch capture writes one)")
    cpu = data.get("cpu")
    if not isinstance(cpu, dict) or not isinstance(cpu.get("arch"), str):
        raise MachineError(f"{where}: \"cpu\" must be an object with \"arch\"")
    nv = data.get("nvidia")
    if nv is not None and not (isinstance(nv, dict) and isinstance(nv.get("devices", []), list)):
        raise MachineError(f"{where}: \"nvidia\" must be null or an object with a \"devices\" list")
    if not isinstance(data.get("env", {}), dict):
        raise MachineError(f"{where}: \"env\" must be an object")


def cpu_from_machine(desc: Mapping[str, Any]) -> CPU:
    cpu = desc["cpu"]
    arch = str(cpu["arch"])
    if arch == "x86_64" and isinstance(cpu.get("raw"), dict):
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in cpu["raw"].items()}
        return x86_from_cpuid(raw, "x86_64", "machine file (raw CPUID)")
    if arch == "aarch64" and isinstance(cpu.get("hwcap"), list) and len(cpu["hwcap"]) == 2:
        from ._cpu import aarch64_from_hwcaps

        return aarch64_from_hwcaps(int(cpu["hwcap"][0]), int(cpu["hwcap"][1]), "machine file (hwcaps)")
    feats = frozenset(str(f) for f in cpu.get("features", []))
    level = cpu.get("x86_64_level")
    if arch == "x86_64" and level is None:
        level = x86_64_level(feats)
    return CPU(arch=arch, features=feats, x86_64_level=level, vendor=str(cpu.get("vendor", "")),
               source="machine file (features)", notes=())


class MachineNvml:
    """The NVML calls the probe makes, answered from a description (with its injected errors), so a described
    machine gives :func:`fatdispatch._nvml.query_nvml` the answer the simulated driver gives the real binding."""

    _CALLS = {"init": "nvmlInit_v2", "shutdown": "nvmlShutdown", "driver_version": "nvmlSystemGetDriverVersion",
              "cuda_driver_version": "nvmlSystemGetCudaDriverVersion_v2", "device_count": "nvmlDeviceGetCount_v2",
              "handle": "nvmlDeviceGetHandleByIndex_v2", "compute_capability": "nvmlDeviceGetCudaComputeCapability",
              "uuid": "nvmlDeviceGetUUID", "name": "nvmlDeviceGetName", "mig": "nvmlDeviceGetMigMode"}

    def __init__(self, nvidia: Mapping[str, Any]) -> None:
        from ._nvml import NvmlError

        self._error = NvmlError
        self.nv = nvidia
        if not nvidia.get("nvml", True):
            raise NvmlError(12, "dlopen(libnvidia-ml.so.1)")

    def _check(self, what: str, device: Mapping[str, Any] | None = None) -> None:
        call = self._CALLS[what]
        for errors in (self.nv.get("nvml_errors") or {}, (device or {}).get("errors") or {}):
            for key, code in errors.items():
                rest = call[len(key):] if call.startswith(key) else None
                if rest in ("", "_v2", "_v3", "WithFlags"):
                    raise self._error(int(code), call)

    def _dev(self, h: int) -> Mapping[str, Any]:
        return dict(self.nv["devices"][h])

    def init(self) -> None:
        self._check("init")

    def shutdown(self) -> None:
        self._check("shutdown")

    def driver_version(self) -> str:
        self._check("driver_version")
        return str(self.nv.get("driver_version", ""))

    def cuda_driver_version(self) -> int:
        self._check("cuda_driver_version")
        if not self.nv.get("libcuda", True):  # as the real v2 call: it asks libcuda.so.1
            raise self._error(12, self._CALLS["cuda_driver_version"])
        return int(self.nv.get("cuda_driver_version") or 0)

    def device_count(self) -> int:
        self._check("device_count")
        return len(self.nv.get("devices", []))

    def handle(self, index: int) -> int:
        self._check("handle", self._dev(index))
        return index

    def compute_capability(self, h: int) -> tuple[int, int]:
        self._check("compute_capability", self._dev(h))
        cc = self._dev(h)["compute_capability"]
        return int(cc[0]), int(cc[1])

    def uuid(self, h: int) -> str:
        self._check("uuid", self._dev(h))
        return str(self._dev(h)["uuid"])

    def name(self, h: int) -> str:
        self._check("name", self._dev(h))
        return str(self._dev(h)["name"])

    def mig_uuids(self, h: int) -> list[str]:
        d = self._dev(h)
        if d.get("mig_mode") != 1:
            return []
        return [str(m["uuid"]) for m in d.get("mig", [])]


def gpus_from_machine(desc: Mapping[str, Any]) -> GPUs:
    """What the GPU probe would report on the described machine."""
    nv = desc.get("nvidia")
    if not nv:
        return no_gpus("no NVIDIA driver is installed (the machine description has none)", "machine file")
    if nv.get("probe_reason") and not nv.get("devices"):
        return no_gpus(str(nv["probe_reason"]), "machine file")
    if nv.get("nvml_hang"):
        from ._gpu import NVML_TIMEOUT_S

        return no_gpus(f"NVML did not answer within {NVML_TIMEOUT_S:g} s; treating the GPU as unusable",
                       "machine file")
    from ._nvml import query_nvml

    g = query_nvml(lambda: MachineNvml(nv), lambda: bool(nv.get("libcuda", True)))
    return g.replace(source="machine file")


def hardware_from_machine(desc: Mapping[str, Any]) -> Hardware:
    return Hardware(cpu=cpu_from_machine(desc), gpu=gpus_from_machine(desc))


# ---------------------------------------------------------------- explain


def manifests_for(target: str) -> list[Manifest]:
    """The manifests TARGET names: a wheel file, a ``*.variants`` folder or its ``manifest.json``, or an installed
    fat module (``pkg._core``) or package (``pkg``)."""
    if target.endswith(".whl") and os.path.isfile(target):
        import zipfile

        from .build._wheel import fat_modules_in_wheel

        with zipfile.ZipFile(target) as zf:
            found = [m for _, m in fat_modules_in_wheel(zf)]
        if not found:
            raise MachineError(f"{target} holds no fat module (no *.variants/manifest.json)")
        return found
    if os.path.isdir(target) or os.path.basename(target) == "manifest.json":
        folder = target if os.path.isdir(target) else os.path.dirname(os.path.abspath(target))
        return [read_manifest(folder)]
    from ._load import fat_modules

    mods = fat_modules()
    names = sorted(n for n in mods if n == target or n.startswith(target + "."))
    if not names:
        known = ", ".join(sorted(mods)) or "none"
        raise MachineError(f"{target!r} is neither a wheel, a variants folder nor an installed fat module "
                           f"(installed: {known})")
    return [read_manifest(mods[n]) for n in names]


def explain_on_machine(target: str, desc: Mapping[str, Any],
                       env: Mapping[str, str] | None = None) -> tuple[Hardware, list[Selection]]:
    """The decision for every fat module TARGET names, on the described machine (its own environment, updated
    with ``env``)."""
    hw = hardware_from_machine(desc)
    full = {str(k): str(v) for k, v in dict(desc.get("env") or {}).items()}
    full.update(env or {})
    return hw, [select(m, hw, full) for m in manifests_for(target)]


def cuda_notes(sel: Selection) -> list[str]:
    """What the chosen CUDA build runs under, where it is not plain (minor-version compatibility)."""
    from ._cuda import runtime_ok

    chosen = sel.candidate(sel.chosen) if sel.chosen else None
    if chosen is None or chosen.variant.cuda is None:
        return []
    cuda = chosen.variant.cuda
    _, note = runtime_ok(cuda.runtime, sel.hardware.gpu.cuda_driver_version, chosen.score[1] >= 2, bool(cuda.ptx),
                         sel.hardware.gpu.driver_version)
    return [f"{chosen.variant.name}: {note}"] if note else []


def print_explain(target: str, machine: str, as_json: bool) -> int:
    import json

    from ._report import selection_json
    from ._report import describe_hardware
    from ._select import format_selection

    desc = load_machine(machine)
    hw, sels = explain_on_machine(target, desc)
    if as_json:
        json.dump({"machine": machine, "provenance": desc.get("provenance"), "hardware": describe_hardware(hw),
                   "modules": [selection_json(s) for s in sels]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    lines = [f"on {machine}: {desc.get('description') or ''} [{desc.get('provenance', 'provenance unknown')}]"]
    cpu = hw.cpu
    lines.append(f"CPU: {cpu.arch}" + (f", x86-64-v{cpu.x86_64_level}" if cpu.x86_64_level is not None else ""))
    g = hw.gpu
    if g.devices:
        cuda = ".".join(map(str, g.cuda_driver_version)) if g.cuda_driver_version else "unknown"
        lines.append(f"NVIDIA driver {g.driver_version} (CUDA {cuda})")
        lines.extend(f"  GPU {d.index}: {d.name}, compute capability {d.compute_capability[0]}."
                     f"{d.compute_capability[1]}" for d in g.devices)
    if g.reason:
        lines.append(f"GPU: none usable: {g.reason}")
    for s in sels:
        lines.append("")
        lines.append(format_selection(s))
        lines.extend(f"  note: {n}" for n in cuda_notes(s))
    print("\n".join(lines))
    return 0


def print_capture(out: str | None) -> int:
    import json

    text = json.dumps(capture(), indent=1) + "\n"
    if out in (None, "-"):
        sys.stdout.write(text)
    else:
        assert out is not None
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0
