"""Reading fat wheels: ``python -m fatdispatch inspect WHEEL``."""

from __future__ import annotations

import json
import sys
import zipfile
from typing import Any

from .._manifest import MANIFEST_NAME, VARIANTS_SUFFIX, json_loads as loads, parse_manifest
from .._records import Manifest

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
            from ._audit import stale_entries

            rel = [n[len(folder) + 1:] for n in infos if n.startswith(folder + "/") and not n.endswith("/")]
            modules.append({"module": man.module, "folder": folder, "generator": man.generator, "builds": builds,
                            "stale": stale_entries(rel, man)})
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
    for m in info["modules"]:
        if m["stale"]:
            print(f"WARNING: {m['folder']} holds files no build in its manifest owns (stale builds?): "
                  f"{', '.join(m['stale'])}; rebuild from a clean tree (python -m fatdispatch audit checks this)",
                  file=sys.stderr)
    if info["over_pypi_limit"]:
        print(f"WARNING: {path} is {info['size'] / 2**20:.1f} MiB, over PyPI's 100 MiB limit", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- slim


def _record_line(name: str, data: bytes) -> str:
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{name},sha256={digest},{len(data)}"


def _baseline_of(man: Manifest) -> str | None:
    cpus = [v for v in man.variants if v.kind == "cpu"]
    if not cpus:
        return None
    named = [v for v in cpus if v.name == "baseline"]
    return (named or [min(cpus, key=lambda v: (v.x86_64_level or 0, len(v.features)))])[0].name


def _rewrite(src: zipfile.ZipFile, target: str, keep: Any, replace: dict[str, bytes],
             add: dict[str, bytes] | None = None) -> None:
    """Copy the wheel ``src`` to ``target``: files for which ``keep(name)`` holds, with ``replace`` applied,
    ``add`` added to the dist-info folder, and RECORD rewritten (sha256 and size of every file)."""
    record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
    dist_info = record_name.rsplit("/", 1)[0]
    records: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            name = info.filename
            if name == record_name or not keep(name):
                continue
            data = replace[name] if name in replace else src.read(info)
            out = zipfile.ZipInfo(name, info.date_time)  # a copy: writestr() mutates the ZipInfo it is given
            out.external_attr = info.external_attr
            out.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(out, data)
            records.append(_record_line(name, data))
        for rel, data in (add or {}).items():
            dst.writestr(f"{dist_info}/{rel}", data)
            records.append(_record_line(f"{dist_info}/{rel}", data))
        records.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(records) + "\n")


def slim_wheel(path: str, keep: list[str], out_dir: str, drop_baseline: bool = False) -> tuple[str, list[str]]:
    """Write a copy of the wheel holding only the builds in ``keep`` (plus each module's baseline unless
    ``drop_baseline``), with manifests and RECORD rewritten.  Returns (new wheel path, warnings)."""
    import os

    from .._errors import FatDispatchError

    warnings: list[str] = []
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, os.path.basename(path))
    if os.path.abspath(target) == os.path.abspath(path):
        raise FatDispatchError("slim: the output folder must differ from the wheel's folder")
    with zipfile.ZipFile(path) as src:
        modules = fat_modules_in_wheel(src)
        if not modules:
            raise FatDispatchError(f"slim: {path} has no fat modules")
        all_names = {v.name for _, m in modules for v in m.variants}
        unknown = sorted(set(keep) - all_names)
        if unknown:
            raise FatDispatchError(f"slim: no build named {', '.join(unknown)}; the wheel has {', '.join(sorted(all_names))}")
        drop_prefixes: list[str] = []
        new_manifests: dict[str, bytes] = {}
        for folder, man in modules:
            base = _baseline_of(man)
            kept = set(keep)
            if base and not drop_baseline:
                kept.add(base)
            elif base and base not in kept:
                warnings.append(f"{man.module}: dropping its baseline build {base!r}: machines older than the kept "
                                "builds will fail to import it")
            if not kept & {v.name for v in man.variants}:
                raise FatDispatchError(f"slim: nothing of {man.module} would be left")
            raw = json.loads(src.read(f"{folder}/manifest.json"))
            raw["variants"] = [v for v in raw["variants"] if v["name"] in kept]
            new_manifests[f"{folder}/manifest.json"] = (json.dumps(raw, indent=1) + "\n").encode()
            drop_prefixes += [f"{folder}/{v.file}" for v in man.variants if v.name not in kept]
        _rewrite(src, target, lambda name: not any(name.startswith(p) for p in drop_prefixes), new_manifests)
    return target, warnings


def print_slim(path: str, keep: list[str], out_dir: str, drop_baseline: bool) -> int:
    target, warnings = slim_wheel(path, keep, out_dir, drop_baseline)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    print(target)
    return print_inspect(target, False)


# ---------------------------------------------------------------- split into variant wheels (PEP 825 draft)

# What uv 0.13.x (``--preview-features wheel-variants``) accepts, which is where the drafts, variantlib and uv
# disagree.  The schema URL is PEP 825's own (uv also takes ``.../peps/850/v0.2.0.json``; it ignores, with a DEBUG
# line, the ``.../v0.2.0.json`` that variantlib 0.2.x writes, and then installs the non-variant wheel).  uv runs
# its built-in providers in place of the plugins named here, matched by ``requires`` package name (and for
# nvidia also by ``plugin-api``); it skips any other provider, so ``provider-variant-x86-64`` (PyPI's older name)
# is never honoured.  variantlib 0.2.2 still parses these files (tests/test_build.py).
VARIANT_SCHEMA = "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"
PROVIDERS: dict[str, dict[str, Any]] = {
    "x86_64": {"requires": ["x86-64-variant-provider"]},
    "aarch64": {"requires": ["aarch64-variant-provider"]},
    "nvidia": {"requires": ["nvidia-variant-provider"],
               "plugin-api": "nvidia_variant_provider.plugin:NvidiaVariantPlugin"},
}
LABEL_MAX = 16  # PEP 825 and uv: a label is 1-16 characters of [0-9a-z._]


def variant_label(build: str) -> str:
    """A PEP 825 variant label (``[0-9a-z._]{1,16}``) for a build name: ``x86-64-v3`` -> ``x86_64_v3``."""
    return build.lower().replace("-", "_")


def check_label(label: str, build: str) -> None:
    """Raise ``FatDispatchError`` unless ``label`` is a variant label uv and variantlib accept."""
    import re

    from .._errors import FatDispatchError

    if not re.fullmatch(r"[0-9a-z._]{1,%d}" % LABEL_MAX, label) or label == "null":
        raise FatDispatchError(
            f"split: build {build!r} gives the variant label {label!r}, which installers refuse: a label is 1-"
            f"{LABEL_MAX} characters of a-z, 0-9, '.', '_' and not 'null'; rename the build (a shorter name in "
            "`variants` / `cuda-targets`, e.g. 'ampere=sm_86+sm_89')")


def variant_properties(properties: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for prop in properties:
        ns, feature, value = (part.strip() for part in prop.split("::"))
        values = out.setdefault(ns, {}).setdefault(feature, [])
        if value not in values:
            values.append(value)
    return out


def _variants_json(labels: dict[str, dict[str, dict[str, list[str]]]], namespaces: list[str]) -> dict[str, Any]:
    """The package-wide part (schema, priorities, providers: identical in every wheel and the index) and
    ``labels``' properties."""
    return {"$schema": VARIANT_SCHEMA, "default-priorities": {"namespace": namespaces},
            "providers": {ns: dict(PROVIDERS.get(ns, {"requires": [f"{ns.replace('_', '-')}-variant-provider"]}))
                          for ns in namespaces},
            "variants": labels}


def split_wheel(path: str, out_dir: str) -> list[str]:
    """One wheel per build, each carrying only that build, a one-build manifest and ``variant.json``; the
    ``{name}-{version}-variants.json`` index; and the fat wheel itself, unchanged, as the fallback for
    installers without variant support.  Returns the paths written."""
    import os
    import shutil

    from .._errors import FatDispatchError

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.basename(path)
    if not base.endswith(".whl") or base.count("-") not in (4, 5):
        raise FatDispatchError(f"split: {base} is not a wheel file name")
    stem = base[:-4]
    name, version = stem.split("-")[:2]
    written = []
    with zipfile.ZipFile(path) as src:
        modules = fat_modules_in_wheel(src)
        if len(modules) != 1:
            raise FatDispatchError(f"split: {base} has {len(modules)} fat modules; split handles exactly one")
        folder, man = modules[0]
        raw = json.loads(src.read(f"{folder}/manifest.json"))
        all_labels = {variant_label(v.name): variant_properties(v.properties) for v in man.variants}
        empty = [v.name for v in man.variants if not v.properties]
        if empty:
            raise FatDispatchError(f"split: builds {', '.join(empty)} have no wheel-variant properties in the manifest")
        for v in man.variants:
            check_label(variant_label(v.name), v.name)
        namespaces = sorted({ns for props in all_labels.values() for ns in props}, key=lambda n: (n != "nvidia", n))
        for v in man.variants:
            label = variant_label(v.name)
            props = all_labels[label]
            others = [f"{folder}/{o.file}" for o in man.variants if o.name != v.name]
            one = dict(raw, variants=[e for e in raw["variants"] if e["name"] == v.name])
            target = os.path.join(out_dir, f"{stem}-{label}.whl")
            variant_json = json.dumps(_variants_json({label: props}, namespaces), indent=1) + "\n"
            _rewrite(src, target, lambda n, others=others: not any(n.startswith(p) for p in others),
                     {f"{folder}/manifest.json": (json.dumps(one, indent=1) + "\n").encode()},
                     {"variant.json": variant_json.encode()})
            written.append(target)
    index = os.path.join(out_dir, f"{name}-{version}-variants.json")
    with open(index, "w", encoding="utf-8") as f:
        json.dump(_variants_json(all_labels, namespaces), f, indent=1)
        f.write("\n")
    written.append(index)
    fallback = os.path.join(out_dir, base)
    if os.path.abspath(fallback) != os.path.abspath(path):
        shutil.copyfile(path, fallback)
    written.append(fallback)
    return written
