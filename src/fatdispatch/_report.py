"""``python -m fatdispatch report``: the hardware, and for every installed fat module what it picks and why."""

from __future__ import annotations

import json
import os
import sys

from . import __version__
from ._errors import FatDispatchError
from ._load import check_chosen, fat_modules, hardware, registered
from ._manifest import read_manifest
from ._select import format_selection, select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from ._records import Hardware, Selection


def describe_hardware(hw: Hardware) -> dict[str, Any]:
    """The hardware as plain JSON-ready data (``report --json``)."""
    cpu = hw.cpu
    gpus = []
    for g in hw.gpu.devices:
        gpus.append({"index": g.index, "name": g.name, "uuid": g.uuid,
                     "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}",
                     "cuda_driver_version": (f"{hw.gpu.cuda_driver_version[0]}.{hw.gpu.cuda_driver_version[1]}"
                                             if hw.gpu.cuda_driver_version else None),
                     "mig_uuids": list(g.mig_uuids)})
    return {"cpu": {"arch": cpu.arch, "features": sorted(cpu.features), "x86_64_level": cpu.x86_64_level,
                    "vendor": cpu.vendor, "source": cpu.source, "notes": list(cpu.notes)},
            "gpus": gpus,
            "gpu_driver": {"driver_version": hw.gpu.driver_version or None,
                           "cuda_driver_version": (".".join(map(str, hw.gpu.cuda_driver_version))
                                                   if hw.gpu.cuda_driver_version else None),
                           "libcuda": hw.gpu.libcuda, "source": hw.gpu.source, "reason": hw.gpu.reason}}


def selection_json(sel: Selection) -> dict[str, Any]:
    return {
        "module": sel.module,
        "selected": sel.chosen,
        "forced": sel.forced,
        "error": sel.error,
        "order": list(sel.order),
        "notes": list(sel.notes),
        "candidates": [
            {"variant": c.variant.name, "kind": c.variant.kind, "usable": c.usable, "reason": c.reason,
             "requires": {"x86_64_level": c.variant.x86_64_level, "features": sorted(c.variant.features),
                          "cuda": None if c.variant.cuda is None else {
                              "sass": list(c.variant.cuda.sass), "ptx": list(c.variant.cuda.ptx),
                              "runtime": "%d.%d" % c.variant.cuda.runtime}},
             "priority": c.variant.priority, "properties": list(c.variant.properties)}
            for c in sel.candidates],
    }


def build_report(env: Mapping[str, str] | None = None, paths: list[str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    hw = hardware(env)
    modules: list[dict[str, Any]] = []
    for name, folder in sorted(fat_modules(paths).items()):
        try:
            sel = select(read_manifest(folder), hw, env, registered())
        except FatDispatchError as exc:
            modules.append({"module": name, "selected": None, "error": str(exc), "candidates": [], "path": folder})
            continue
        entry = selection_json(sel)
        entry["path"] = folder
        entry["refused"] = check_chosen(sel, folder)  # the file checks an import applies
        modules.append(entry)
    return {"fatdispatch": __version__, "python": sys.version.split()[0], "hardware": describe_hardware(hw),
            "modules": modules}


def print_report(as_json: bool, env: Mapping[str, str] | None = None) -> int:
    report = build_report(env)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    cpu = report["hardware"]["cpu"]
    out = [f"fatdispatch {report['fatdispatch']} on Python {report['python']}",
           f"CPU: {cpu['arch']}" + (f", x86-64-v{cpu['x86_64_level']}" if cpu["x86_64_level"] is not None else "")
           + f" ({cpu['vendor'] or 'unknown vendor'}, probed by {cpu['source']})",
           "  features: " + " ".join(cpu["features"])]
    out.extend(f"  note: {n}" for n in cpu["notes"])
    drv = report["hardware"]["gpu_driver"]
    if report["hardware"]["gpus"]:
        out.append(f"NVIDIA driver {drv['driver_version']} (CUDA {drv['cuda_driver_version']}), "
                   f"libcuda {'present' if drv['libcuda'] else 'MISSING'}")
        for g in report["hardware"]["gpus"]:
            out.append(f"  GPU {g['index']}: {g['name']}, compute capability {g['compute_capability']}")
    if drv["reason"]:
        out.append(f"GPU: none usable: {drv['reason']}")
    if not report["modules"]:
        out.append("No fat modules are installed on sys.path.")
    for m in report["modules"]:
        out.append("")
        if m.get("error") and not m["candidates"]:
            out.append(f"{m['module']}: {m['error']}")
            continue
        out.append(f"{m['module']}: " + (f"picks {m['selected']}" if m["selected"] else f"nothing loads: {m['error']}"))
        for c in m["candidates"]:
            mark = "*" if c["variant"] == m["selected"] else ("+" if c["usable"] else "-")
            out.append(f"  {mark} {c['variant']:<16} {c['reason']}")
        out.extend(f"  note: {n}" for n in m["notes"])
        out.extend(f"  refused at load: {b}: {why}" for b, why in m["refused"].items())
    print("\n".join(out))
    return 0
