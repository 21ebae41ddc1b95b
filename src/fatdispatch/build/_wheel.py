"""Reading fat wheels: ``python -m fatdispatch inspect WHEEL``."""

from __future__ import annotations

import json
import sys
import zipfile
from typing import Any

from .._runtime import json_loads as loads
from .._runtime import MANIFEST_NAME, VARIANTS_SUFFIX, Manifest, parse_manifest

PYPI_LIMIT = 100 * 1024 * 1024


def fat_modules_in_wheel(zf: zipfile.ZipFile) -> list[tuple[str, Manifest]]:
    """(variants folder inside the wheel, manifest) for every fat module in the wheel."""
    out = []
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) >= 2 and parts[-1] == MANIFEST_NAME and parts[-2].endswith(VARIANTS_SUFFIX):
            folder = "/".join(parts[:-1])
            data = loads(zf.read(name).decode("utf-8"))
            out.append((folder, parse_manifest(data, f"{zf.filename}!{name}")))
    return out


def inspect_wheel(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        modules = []
        for folder, man in fat_modules_in_wheel(zf):
            builds = []
            for v in man.variants:
                prefix = f"{folder}/{v.file}"
                files = [i for n, i in infos.items() if n.startswith(prefix) and n != prefix + "/"]
                builds.append({
                    "name": v.name, "kind": v.kind, "arch": v.arch, "priority": v.priority,
                    "x86_64_level": v.x86_64_level, "features": sorted(v.features),
                    "sass": list(v.cuda.sass) if v.cuda else [], "ptx": list(v.cuda.ptx) if v.cuda else [],
                    "cuda_runtime": "%d.%d" % v.cuda.runtime if v.cuda else None,
                    "files": [i.filename for i in files],
                    "size": sum(i.file_size for i in files),
                    "compressed_size": sum(i.compress_size for i in files),
                    "properties": list(v.properties),
                })
            modules.append({"module": man.module, "folder": folder, "generator": man.generator, "builds": builds})
    import os

    size = os.path.getsize(path)
    return {"wheel": path, "size": size, "over_pypi_limit": size > PYPI_LIMIT, "modules": modules}


def print_inspect(path: str, as_json: bool) -> int:
    info = inspect_wheel(path)
    if as_json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{info['wheel']}: {info['size'] / 1024:.1f} KiB")
    if not info["modules"]:
        print("  no fat modules")
    for m in info["modules"]:
        print(f"  {m['module']} ({m['folder']}, {m['generator']})")
        print(f"    {'build':<18} {'kind':<5} {'requires':<34} {'targets':<24} {'size KiB':>9}")
        for b in m["builds"]:
            req = f"x86-64-v{b['x86_64_level']}" if b["x86_64_level"] else b["arch"]
            if b["kind"] == "cuda":
                req += f", CUDA >= {b['cuda_runtime']}"
            targets = " ".join([f"sm_{t}" for t in b["sass"]] + [f"compute_{t}" for t in b["ptx"]]) or "-"
            print(f"    {b['name']:<18} {b['kind']:<5} {req:<34} {targets:<24} {b['size'] / 1024:9.1f}")
    if info["over_pypi_limit"]:
        print(f"WARNING: {path} is {info['size'] / 2**20:.1f} MiB, over PyPI's 100 MiB limit", file=sys.stderr)
    return 0
