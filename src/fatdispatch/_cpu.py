"""The CPU probe, in three layers.

1. Raw probes (``_raw_*``) ask the hardware or the OS and return plain data:
   CPUID registers and XCR0 from the compiled helper, auxv words, sysctl
   values, or the text of ``/proc/cpuinfo``.  They swallow only the errors they
   expect and return ``None`` when their source is missing.
2. Pure parsers (``x86_from_cpuid``, ``from_cpuinfo``, ``aarch64_from_hwcaps``)
   turn raw data into a :class:`CPU` value.  Tests replay recorded machines
   through them.
3. :func:`probe_cpu` picks the best raw source and caches the answer for the
   life of the process.  CPU facts are never cached on disk: valgrind, qemu and
   VM migration change them between runs.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import _jsonfile
from ._records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

_REG_INDEX = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}
_TABLE_PATH = os.path.join(os.path.dirname(__file__), "_data", "cpu_features.json")
_table: dict[str, Any] | None = None


class CPU(Record):
    """What the CPU can run, as seen by this process.

    ``features`` holds canonical lower-case names (``sse4_2``, ``avx2``,
    ``avx512f``) that are usable: present in CPUID *and* enabled by the OS.
    ``x86_64_level`` is the psABI level (1-4) on x86-64, else ``None``.
    ``notes`` explains every feature that was present but is not usable.
    """

    __slots__ = ("arch", "features", "x86_64_level", "vendor", "source", "notes")
    arch: str
    features: frozenset[str]
    x86_64_level: int | None
    vendor: str
    source: str
    notes: tuple[str, ...]


def feature_table() -> dict[str, Any]:
    """The CPU feature vocabulary (``_data/cpu_features.json``)."""
    global _table
    if _table is None:
        _table = _jsonfile.read(_TABLE_PATH)
    return _table


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    if m in ("i386", "i486", "i586", "i686", "x86"):
        return "i686"
    return m


# ---------------------------------------------------------------- pure parsers


def x86_64_level(features: frozenset[str] | set[str], table: Mapping[str, Any] | None = None) -> int:
    """The highest psABI level whose features, and those of every lower level, are all present.

    Levels nest: with AVX2 masked off, AVX-512F alone does not make a v4 machine.
    Returns 0 when even v1 is incomplete (an emulator with a trimmed CPU model).
    """
    levels = (table or feature_table())["x86"]["levels"]
    level = 0
    for n in ("1", "2", "3", "4"):
        if not all(f in features for f in levels[n]):
            break
        level = int(n)
    return level


def x86_from_cpuid(raw: Mapping[str, Any], arch: str = "x86_64", source: str = "cpuid",
                   table: Mapping[str, Any] | None = None) -> CPU:
    """Turn raw CPUID leaves and XCR0 into a :class:`CPU`.

    ``raw`` has the keys the compiled helper returns: ``max_leaf``, ``vendor``,
    ``"1"``, ``"7"``, ``"7.1"``, ``max_ext``, ``"0x80000001"`` (each a 4-tuple
    EAX, EBX, ECX, EDX), ``xcr0`` (``None`` when OSXSAVE is off), and optionally
    ``amx_permission`` (``False`` when Linux refused AMX state) and
    ``macos_avx512`` (``hw.optional.avx512f`` on macOS, whose kernel enables
    the AVX-512 state lazily).
    """
    tab = table or feature_table()
    x86 = tab["x86"]
    present: set[str] = set()
    for name, (leaf, reg, bit) in x86["bits"].items():
        regs = raw.get(leaf)
        if not regs:
            continue
        if (int(regs[_REG_INDEX[reg]]) >> bit) & 1:
            present.add(name)
    notes: list[str] = []
    usable = set(present)
    xcr0 = raw.get("xcr0")
    for group, spec in sorted(x86["os_state"].items()):
        if group == "comment":
            continue
        mask, members = spec
        have = sorted(present.intersection(members))
        if not have:
            continue
        if group == "zmm" and raw.get("macos_avx512"):
            continue  # macOS enables ZMM state on first use; its sysctl says it will
        if xcr0 is None:
            usable.difference_update(have)
            notes.append(f"OSXSAVE is off, so XGETBV cannot confirm OS support: {', '.join(have)} unusable")
        elif (int(xcr0) & mask) != mask:
            usable.difference_update(have)
            notes.append(f"XCR0=0x{int(xcr0):x} lacks {group.upper()} state (mask 0x{mask:x}): "
                         f"{', '.join(have)} unusable")
        elif group == "amx" and raw.get("amx_permission") is False:
            usable.difference_update(have)
            notes.append(f"the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM): {', '.join(have)} unusable")
    if raw.get("translated"):
        hidden = sorted(f for f in usable if f.startswith("avx512") or f.startswith("amx"))
        usable.difference_update(hidden)
        if hidden:
            notes.append("running under Rosetta 2, which has no AVX-512 or AMX: " + ", ".join(hidden) + " unusable")
    feats = frozenset(usable)
    return CPU(arch=arch, features=feats, x86_64_level=x86_64_level(feats, tab) if arch == "x86_64" else None,
               vendor=str(raw.get("vendor", "")), source=source, notes=tuple(notes))


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


# ---------------------------------------------------------------- raw probes


def _raw_native() -> Any:
    try:
        from . import _native
    except ImportError:
        return None
    return _native


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


def _machine() -> str:
    if sys.platform == "win32":
        return normalize_arch(os.environ.get("PROCESSOR_ARCHITECTURE", "AMD64"))
    return normalize_arch(os.uname().machine)


def _probe_uncached() -> CPU:
    arch = _machine()
    native = _raw_native()
    if native is not None and arch == "x86_64" and hasattr(native, "x86"):
        raw = dict(native.x86())
        tab = feature_table()
        if sys.platform == "darwin":
            raw["translated"] = bool(native.sysctl("sysctl.proc_translated"))
            raw["macos_avx512"] = bool(native.sysctl("hw.optional.avx512f"))
        regs7 = raw.get("7") or (0, 0, 0, 0)
        amx_mask = tab["x86"]["os_state"]["amx"][0]
        if (regs7[3] >> 24) & 1 and raw.get("xcr0") is not None and (raw["xcr0"] & amx_mask) == amx_mask:
            raw["amx_permission"] = bool(native.request_amx())
        return x86_from_cpuid(raw, arch, "cpuid", tab)
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


_lock = _thread.allocate_lock()
_cached: CPU | None = None
probe_count = 0  # how many times the hardware was really probed (tests check it is 1)


def probe_cpu() -> CPU:
    """This process's CPU, probed once (thread-safe)."""
    global _cached, probe_count
    cpu = _cached
    if cpu is not None:
        return cpu
    with _lock:
        if _cached is None:
            probe_count += 1
            _cached = _probe_uncached()
        return _cached


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
