"""The rarer paths of the import machinery, kept out of :mod:`fatdispatch._runtime` so the full path
stays small: non-x86 and fallback CPU parsers, ``FATDISPATCH_DISABLE``/``FATDISPATCH_FORCE`` handling,
``CUDA_VISIBLE_DEVICES`` rules, SASS/PTX fitting, the GPU cache reader, and human-readable reports.

Every function here is pure or a small raw probe, like the rest of the runtime; it is imported on first need.
"""

from __future__ import annotations

import _thread
import os
import sys

from ._runtime import (ALIASES, CACHE_SCHEMA, CATEGORIES, CPU, GPU, GPUs, KNOWN_VARIABLES, MATCH_NAMES, ConfigError,
                       Candidate, Hardware, Manifest, Selection, Variant, cache_root, feature_table, json_loads,
                       parse_sm, pick_file, x86_64_level)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence


def probe_other_cpu(arch: str, native: Any) -> CPU:
    """The CPU probe off x86-64, or without the compiled helper: auxv, sysctl, then /proc/cpuinfo."""
    if native is not None and arch == "aarch64" and hasattr(native, "hwcaps"):
        h1, h2 = native.hwcaps()
        return aarch64_from_hwcaps(h1, h2)
    if native is not None and hasattr(native, "sysctl"):
        tab = feature_table()["aarch64"]["macos_sysctl"]
        return from_sysctl({key: native.sysctl(key) for key in set(tab.values())}, arch)
    text = _raw_cpuinfo()
    if text is not None:
        return from_cpuinfo(text, arch)
    return CPU(arch=arch, features=frozenset(), x86_64_level=0 if arch == "x86_64" else None, vendor="",
               source="none", notes=("no CPU probe works here: only builds that require no features are usable",))


def _raw_cpuinfo() -> str | None:
    try:
        fd = os.open("/proc/cpuinfo", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 16384).decode("utf-8", "replace")  # the first processor's block is ~2 KiB
    except OSError:
        return None
    finally:
        os.close(fd)


def aarch64_from_hwcaps(hwcap: int, hwcap2: int, source: str = "hwcap",
                        table: Mapping[str, Any] | None = None) -> CPU:
    """Turn Linux's ``AT_HWCAP``/``AT_HWCAP2`` words into a :class:`CPU`."""
    tab = (table or feature_table())["aarch64"]
    feats = {n for n, b in tab["hwcap"].items() if (hwcap >> b) & 1}
    feats.update(n for n, b in tab["hwcap2"].items() if (hwcap2 >> b) & 1)
    return CPU(arch="aarch64", features=frozenset(feats), x86_64_level=None, vendor="", source=source, notes=())


def from_sysctl(values: Mapping[str, int | None], arch: str, table: Mapping[str, Any] | None = None) -> CPU:
    """macOS arm64: ``hw.optional.*`` values (``None`` where the name does not exist)."""
    tab = (table or feature_table())["aarch64"]
    feats = {"fp"}
    feats.update(n for n, key in tab["macos_sysctl"].items() if values.get(key))
    return CPU(arch=arch, features=frozenset(feats), x86_64_level=None, vendor="Apple", source="sysctl", notes=())


def from_cpuinfo(text: str, arch: str, table: Mapping[str, Any] | None = None) -> CPU:
    """Parse the first processor's flags from ``/proc/cpuinfo`` text.

    The fallback when the compiled helper is missing.  The kernel drops flags
    whose XSAVE state it did not enable, but under an emulator it shows the
    host's flags, so CPUID is always preferred.
    """
    tab = table or feature_table()
    flags: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if flags:
                break  # end of the first processor's block
            continue
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags = value.split()
            break
    if arch == "x86_64":
        aliases = tab["x86"]["cpuinfo_aliases"]
        known = tab["x86"]["bits"]
        feats = {aliases.get(f, f) for f in flags}
        feats = {f for f in feats if f in known}
        if "xsave" in feats and "avx" in feats:
            feats.add("osxsave")  # the kernel lists avx only when it enabled the state with XSETBV
        fs = frozenset(feats)
        return CPU(arch=arch, features=fs, x86_64_level=x86_64_level(fs, tab), vendor="", source="proc-cpuinfo",
                   notes=("compiled probe unavailable; read /proc/cpuinfo (first CPU)",))
    known = set(tab["aarch64"]["hwcap"]) | set(tab["aarch64"]["hwcap2"])
    return CPU(arch=arch, features=frozenset(f for f in flags if f in known), x86_64_level=None, vendor="",
               source="proc-cpuinfo", notes=("compiled probe unavailable; read /proc/cpuinfo (first CPU)",))


def without(cpu: CPU, names: frozenset[str], why: str, table: Mapping[str, Any] | None = None) -> CPU:
    """``cpu`` with ``names`` removed (``FATDISPATCH_DISABLE``).

    Removing ``avx`` also removes everything that needs YMM state, and removing
    ``avx512f`` everything that needs ZMM state; the level is recomputed.
    """
    tab = table or feature_table()
    drop = set(names)
    groups = tab["x86"]["os_state"]
    if "avx" in drop:
        drop.update(groups["ymm"][1])
        drop.update(groups["zmm"][1])
    if "avx512f" in drop:
        drop.update(groups["zmm"][1])
    removed = sorted(drop & cpu.features)
    if not removed:
        return cpu
    feats = cpu.features - drop
    level = x86_64_level(feats, tab) if cpu.arch == "x86_64" else None
    return cpu.replace(features=feats, x86_64_level=level, notes=cpu.notes + (f"{why} removed {', '.join(removed)}",))


def visible_gpus(gpus: Sequence[GPU], env: Mapping[str, str]) -> tuple[tuple[GPU, ...], str | None]:
    """The devices CUDA would show this process, and a note where it is uncertain (rules: :mod:`._cuda`)."""
    from ._cuda import visible_gpus as rule  # fatdispatch: CUDA rules live in _cuda (issue 12)

    return rule(gpus, env)


def _read_small(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace")
    except OSError:
        return ""


def cache_key() -> dict[str, Any]:
    """What must be unchanged for a cached GPU answer to hold."""
    try:
        gpus = sorted(os.listdir("/proc/driver/nvidia/gpus"))  # names only: reading files there can wake a GPU
    except OSError:
        gpus = []
    return {"boot_id": _read_small("/proc/sys/kernel/random/boot_id").strip(),
            "driver": _read_small("/proc/driver/nvidia/version").strip(),
            "gpus": gpus, "machine": os.uname().machine if hasattr(os, "uname") else sys.platform,
            "python_bits": sys.maxsize > 2**32}


def cache_path(env: Mapping[str, str]) -> str | None:
    root = cache_root(env)
    return os.path.join(root, f"gpu-v{CACHE_SCHEMA}.json") if root else None


def _secure(st: os.stat_result) -> bool:
    if sys.platform == "win32":
        return True
    return st.st_uid == os.getuid() and not (st.st_mode & 0o022)


def gpus_from_json(data: Any, source: str) -> GPUs:
    """Rebuild :class:`GPUs` from cached JSON; raises ValueError/TypeError/KeyError on any doubt."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    devices = []
    for d in data["devices"]:
        cc = d["compute_capability"]
        if not (isinstance(cc, list) and len(cc) == 2 and all(type(x) is int and 0 <= x < 100 for x in cc)):
            raise ValueError("bad compute capability")
        if type(d["index"]) is not int or not isinstance(d["uuid"], str) or not isinstance(d["name"], str):
            raise ValueError("bad device")
        migs = d["mig_uuids"]
        if not all(isinstance(m, str) for m in migs):
            raise ValueError("bad MIG list")
        devices.append(GPU(index=d["index"], name=d["name"], uuid=d["uuid"], compute_capability=(cc[0], cc[1]),
                           mig_uuids=tuple(migs)))
    cv = data["cuda_driver_version"]
    if cv is not None and not (isinstance(cv, list) and len(cv) == 2 and all(type(x) is int for x in cv)):
        raise ValueError("bad CUDA version")
    reason = data["reason"]
    if reason is not None and not isinstance(reason, str):
        raise ValueError("bad reason")
    if type(data["libcuda"]) is not bool or not isinstance(data["driver_version"], str):
        raise ValueError("bad driver facts")
    return GPUs(devices=tuple(devices), driver_version=data["driver_version"],
                cuda_driver_version=(cv[0], cv[1]) if cv else None, libcuda=data["libcuda"], source=source,
                reason=reason)


def read_cache(path: str, key: Mapping[str, Any]) -> GPUs | None:
    """The cached answer, or None when missing, stale, insecure or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _secure(st) or st.st_size > 65536:
            return None
        data = json_loads(os.read(fd, 65536).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    try:
        if data.get("schema") != CACHE_SCHEMA or data.get("key") != dict(key):
            return None
        return gpus_from_json(data["gpus"], "cache")
    except (AttributeError, ValueError, TypeError, KeyError):
        return None


def write_private_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + rename) into a private directory; failures are ignored."""
    import json

    directory = os.path.dirname(path)
    try:
        os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)  # (makedirs' mode is the leaf's only)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _secure(os.stat(directory)):
            return
        tmp = f"{path}.{os.getpid()}.{_thread.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def forget_pick(variants_dir: str) -> None:
    """Drop the pick cache's entry for ``variants_dir`` (its pick did not load cleanly)."""
    path = pick_file(variants_dir)
    try:
        if path is not None:
            os.unlink(path)
    except OSError:
        pass


def prune_picks(folder: str, keep: int = 64) -> None:
    """Keep the pick cache to the ``keep`` most recently written entries (one per variants folder; folders of
    uninstalled packages and old virtual environments are never read again)."""
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(".json")]
        if len(entries) <= keep:
            return
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns, reverse=True)
        for old in entries[keep:]:
            os.unlink(old.path)
    except OSError:
        pass


def drop_cache(env: Mapping[str, str]) -> None:
    path = cache_path(env)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Messages for ``FATDISPATCH_*`` names that fatdispatch does not know (typos)."""
    out = []
    for key in env:
        if key.upper().startswith("FATDISPATCH_") and key not in KNOWN_VARIABLES:
            close = _close(key.upper(), KNOWN_VARIABLES)
            hint = f"; did you mean {close}?" if close else f"; known: {', '.join(KNOWN_VARIABLES)}"
            out.append(f"fatdispatch: ignoring unknown environment variable {key}{hint}")
    return out


def _close(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    """A cheap "did you mean": the option sharing the most characters in order (no difflib import)."""
    best, best_score = None, 0.0
    for opt in options:
        # longest common subsequence ratio
        prev = [0] * (len(opt) + 1)
        for ch in word:
            cur = [0]
            for j, oc in enumerate(opt):
                cur.append(prev[j] + 1 if ch == oc else max(prev[j + 1], cur[j]))
            prev = cur
        score = 2.0 * prev[-1] / (len(word) + len(opt))
        if score > best_score:
            best, best_score = opt, score
    return best if best_score >= 0.75 else None


def disabled_features(env: Mapping[str, str], known: set[str] | frozenset[str]) -> frozenset[str]:
    raw = env.get("FATDISPATCH_DISABLE")
    if raw is None:
        return frozenset()
    names = [n.strip().lower() for n in raw.replace(" ", ",").split(",")]
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad:
        close = _close(bad[0], sorted(known))
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ConfigError("FATDISPATCH_DISABLE", raw,
                          f"unknown CPU feature {bad[0]!r}{hint}; known features: {', '.join(sorted(known))}")
    return frozenset(names)


def _apply_force(forced: str, manifest: Manifest, judged: list[tuple[Variant, str | None, tuple[int, ...]]],
                 usable: list[tuple[Variant, tuple[int, ...]]], unsafe: bool,
                 env: Mapping[str, str]) -> tuple[list[str], str | None]:
    module = manifest.module
    raw = env.get("FATDISPATCH_FORCE", "")
    token = ALIASES.get(forced, forced)
    names = {v.name.lower(): v for v in manifest.variants}
    if token == "cpu" or token == "cuda":
        order = [v.name for v, _ in usable if v.kind == token]
        if order:
            return order, None
        if unsafe:
            ranked = sorted((p for p in judged if p[0].kind == token), key=lambda p: p[2], reverse=True)
            if ranked:
                return [v.name for v, _, _ in ranked], None
        kinds = [f"{v.name}: {why}" for v, why, _ in judged if v.kind == token]
        detail = "; ".join(kinds) if kinds else f"{module} has no {token.upper()} build"
        return [], (f"FATDISPATCH_FORCE={raw} asks for a {token.upper()} build of {module}, but none can run here "
                    f"({detail})")
    if token == "baseline" and "baseline" not in names:
        cpus = [p for p in judged if p[0].kind == "cpu"]
        if cpus:
            token = min(cpus, key=lambda p: (p[0].x86_64_level or 0, len(p[0].features)))[0].name.lower()
    target = names.get(token)
    if target is None:
        valid = sorted({v.name for v in manifest.variants} | set(CATEGORIES))
        aliases = sorted(a for a, t in ALIASES.items() if t in names or t in CATEGORIES)
        raise ConfigError("FATDISPATCH_FORCE", raw,
                          f"{module} has no build {forced!r}; valid values: {', '.join(valid)}"
                          + (f" (aliases: {', '.join(aliases)})" if aliases else ""))
    why = next(w for v, w, _ in judged if v is target)
    if why is None or unsafe:
        return [target.name], None
    return [], (f"FATDISPATCH_FORCE={raw} asks for build {target.name!r} of {module}, but this machine cannot run "
                f"it: {why}. Unset FATDISPATCH_FORCE, or set FATDISPATCH_UNSAFE_FORCE=1 to load it anyway "
                f"(it may crash with an illegal instruction)")


def format_selection(sel: Selection) -> str:
    """A human-readable account of the decision, one line per build."""
    lines = []
    if sel.error:
        lines.append(f"{sel.module}: nothing can be loaded: {sel.error}")
    else:
        lines.append(f"{sel.module} -> {sel.chosen}")
    for c in sel.candidates:
        mark = "*" if c.variant.name == sel.chosen else ("+" if c.usable else "-")
        lines.append(f"  {mark} {c.variant.name:<16} {c.reason}")
    for n in sel.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


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


def _warn_fallback(name: str, build: str, attempts: list[tuple[str, str]]) -> None:
    text = "; ".join(f"{b}: {why}" for b, why in attempts)
    msg = f"fatdispatch: {name} fell back to {build} after: {text}"
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("fatdispatch").warning("%s", msg)
    else:
        import _warnings

        _warnings.warn(msg, RuntimeWarning, 3)


def sm_fit(sass: tuple[str, ...], ptx: tuple[str, ...], cc: tuple[int, int]) -> int:
    """How a CUDA build's code fits one GPU: 3 exact SASS, 2 compatible SASS, 1 PTX, 0 none (rules: :mod:`._cuda`)."""
    from ._cuda import sm_fit as rule  # fatdispatch: CUDA rules live in _cuda (issue 12)

    return rule(sass, ptx, cc)


def _targets_text(v: Variant) -> str:
    assert v.cuda is not None
    parts = [f"sm_{t}" for t in v.cuda.sass] + [f"compute_{t} (PTX)" for t in v.cuda.ptx]
    return ", ".join(parts)
