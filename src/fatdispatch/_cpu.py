"""The CPU probe: what this process's CPU can run.

Raw probes ask the hardware or the OS and return plain data (CPUID registers and XCR0 from the compiled
primitives in ``_fatdispatch``; auxv words, sysctl values, ``/proc/cpuinfo`` text); pure decoders turn raw
data into a :class:`~fatdispatch._records.CPU`, so tests replay recorded machines through them.  On x86 the
host is probed and decoded in one compiled call, ``_fatdispatch.cpu()``, with the table generated from
``_data/cpu_features.json``.  :func:`probe_cpu` caches the answer for the life of the process.  CPU facts are
never cached on disk: valgrind, qemu and VM migration change them (the pick cache keys on the raw words
instead, re-read by every import).
"""

import _thread
import os
import sys

from ._records import CPU

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

_native: "Any"
try:
    import _fatdispatch  # the compiled import path, which holds the CPU primitives too

    _native = _fatdispatch
except ImportError:  # the build side, run where fatdispatch is not built yet (its own build): /proc/cpuinfo
    _native = None

def _table() -> "dict[str, Any]":
    """The feature vocabulary, read on first need (an x86 probe through the primitives needs none)."""
    from ._tables import feature_table

    return feature_table()


def native() -> "Any":
    """The compiled primitives (the module ``_fatdispatch``), or None where it is not built."""
    return _native


def x86_64_level(features: "frozenset[str] | set[str]", table: "Mapping[str, Any] | None" = None) -> "int":
    """The highest psABI level whose features, and those of every lower level, are all present.

    Levels nest: with AVX2 masked off, AVX-512F alone does not make a v4 machine.
    Returns 0 when even v1 is incomplete (an emulator with a trimmed CPU model).
    The levels come from the feature table (``table``) or, by default, the copy
    compiled into ``_fatdispatch`` from that same table.
    """
    mod = _native if table is None else None
    levels = mod.x86_levels() if mod is not None and hasattr(mod, "x86_levels") else None
    if levels is None:
        levels = [(table or _table())["x86"]["levels"][n] for n in ("1", "2", "3", "4")]
    level = 0
    for need in levels:
        if not features.issuperset(need):
            break
        level += 1
    return level


_MASKED = {
    "osxsave": "OSXSAVE is off, so XGETBV cannot confirm OS support: {names} unusable",
    "xcr0": "XCR0=0x{xcr0:x} lacks {group} state (mask 0x{mask:x}): {names} unusable",
    "amx_permission": "the kernel refused AMX tile permission (ARCH_REQ_XCOMP_PERM): {names} unusable",
    "rosetta": "running under Rosetta 2, which has no AVX-512 or AMX: {names} unusable",
}


def x86_from_cpuid(raw: "Mapping[str, Any]", arch: "str" = "x86_64", source: "str" = "cpuid") -> "CPU":
    """Turn raw CPUID leaves and XCR0 into a :class:`CPU` (pure).

    ``raw`` has the keys ``_fatdispatch.x86()`` returns: ``max_leaf``, ``vendor``,
    ``"1"``, ``"7"``, ``"7.1"``, ``max_ext``, ``"0x80000001"`` (each a 4-tuple
    EAX, EBX, ECX, EDX), ``xcr0`` (``None`` when OSXSAVE is off), and optionally
    ``amx_permission`` (``False`` when Linux refused AMX state),
    ``macos_avx512`` (macOS enables the AVX-512 state lazily and says so in a
    sysctl) and ``translated`` (Rosetta 2).  The bits are decoded by
    ``_fatdispatch.x86_decode`` with the table compiled from ``_data/cpu_features.json``.
    """
    if _native is None or not hasattr(_native, "x86_decode"):
        from ._errors import FatDispatchError

        raise FatDispatchError("fatdispatch's compiled module (_fatdispatch) is missing: reinstall "
                               "fatdispatch from a wheel, or with a C compiler available")
    usable, masked = _native.x86_decode(dict(raw))
    return CPU(arch=arch, features=usable, x86_64_level=x86_64_level(usable) if arch == "x86_64" else None,
               vendor=str(raw.get("vendor", "")), source=source, notes=masked_notes(masked, raw))


def masked_notes(masked: "Iterable[tuple[str, str, int, frozenset[str]]]", raw: "Mapping[str, Any]") -> "tuple[str, ...]":
    """One sentence per group of present-but-unusable features (``x86_decode``'s second item)."""
    return tuple(_MASKED[why].format(names=", ".join(sorted(names)), group=group.upper(), mask=mask,
                                     xcr0=raw.get("xcr0") or 0) for why, group, mask, names in masked)


def normalize_arch(machine: "str") -> "str":
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    if m in ("i386", "i486", "i586", "i686", "x86"):
        return "i686"
    return m


def _machine() -> "str":
    if sys.platform == "win32":
        return normalize_arch(os.environ.get("PROCESSOR_ARCHITECTURE", "AMD64"))
    return normalize_arch(os.uname().machine)


_cpu_lock = _thread.allocate_lock()
_cpu_cached: "CPU | None" = None
_cpu_raw: "dict[str, Any] | None" = None  # the raw CPUID/XCR0 words the cached CPU was decoded from
cpu_probe_count = 0  # how many times the CPU was really probed (tests check it is 1)


def probe_cpu() -> "CPU":
    """This process's CPU, probed once (thread-safe)."""
    global _cpu_cached, cpu_probe_count
    cpu = _cpu_cached
    if cpu is not None:
        return cpu
    with _cpu_lock:
        if _cpu_cached is None:
            cpu_probe_count += 1
            _cpu_cached = _probe_cpu_uncached()
        return _cpu_cached


def probe_raw() -> "dict[str, Any] | None":
    """The raw CPUID/XCR0 words :func:`probe_cpu` decoded (what the pick cache keys on), or None where the CPU
    did not come from CPUID."""
    probe_cpu()
    return _cpu_raw


def _probe_cpu_uncached() -> "CPU":
    global _cpu_raw
    if _native is not None and hasattr(_native, "cpu") and _machine() == "x86_64":
        found: "Any" = _native.cpu()  # x86() and x86_decode() in one call; x86_from_cpuid(found["raw"]) gives the same CPU
        _cpu_raw = found["raw"]
        return CPU(arch=found["arch"], features=found["features"], x86_64_level=found["x86_64_level"],
                   vendor=found["vendor"], source="cpuid", notes=masked_notes(found["masked"], found["raw"]))
    return probe_other_cpu(_machine(), _native)


# ---------------------------------------------------------------- off x86-64, or without the primitives


def probe_other_cpu(arch: "str", native: "Any") -> "CPU":
    """The CPU probe off x86-64, or without the compiled primitives: auxv, sysctl, then /proc/cpuinfo."""
    if arch == "aarch64" and (hasattr(native, "hwcaps") or not hasattr(native, "sysctl")):  # Linux: _aarch64
        from ._aarch64 import probe_cpu_record

        return probe_cpu_record(getattr(native, "hwcaps", None))
    if native is not None and hasattr(native, "sysctl"):
        tab = _table()["aarch64"]["macos_sysctl"]
        return from_sysctl({key: native.sysctl(key) for key in set(tab.values())}, arch)
    text = _raw_cpuinfo()
    if text is not None:
        return from_cpuinfo(text, arch)
    return CPU(arch=arch, features=frozenset(), x86_64_level=0 if arch == "x86_64" else None, vendor="",
               source="none", notes=("no CPU probe works here: only builds that require no features are usable",))


def _raw_cpuinfo() -> "str | None":
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


def aarch64_from_hwcaps(hwcap: "int", hwcap2: "int", source: "str" = "hwcap",
                        table: "Mapping[str, Any] | None" = None) -> "CPU":
    """Turn Linux's ``AT_HWCAP``/``AT_HWCAP2`` words into a :class:`CPU`."""
    from ._aarch64 import decode_hwcaps  # the one aarch64 decoder

    return CPU(arch="aarch64", features=decode_hwcaps(hwcap, hwcap2, table), x86_64_level=None, vendor="",
               source=source, notes=())


def from_sysctl(values: "Mapping[str, int | None]", arch: "str", table: "Mapping[str, Any] | None" = None) -> "CPU":
    """macOS arm64: ``hw.optional.*`` values (``None`` where the name does not exist)."""
    tab = (table or _table())["aarch64"]
    feats = {"fp"}
    feats.update(n for n, key in tab["macos_sysctl"].items() if values.get(key))
    return CPU(arch=arch, features=frozenset(feats), x86_64_level=None, vendor="Apple", source="sysctl", notes=())


def from_cpuinfo(text: "str", arch: "str", table: "Mapping[str, Any] | None" = None) -> "CPU":
    """Parse the first processor's flags from ``/proc/cpuinfo`` text.

    The fallback when the compiled primitives are missing.  The kernel drops flags
    whose XSAVE state it did not enable, but under an emulator it shows the
    host's flags, so CPUID is always preferred.
    """
    tab = table or _table()
    flags: "list[str]" = []
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
    from ._aarch64 import from_cpuinfo as arm_from_cpuinfo  # the one aarch64 decoder: every core's Features

    arm = arm_from_cpuinfo(text, tab)
    return CPU(arch=arch, features=arm.features, x86_64_level=None, vendor="", source=arm.source, notes=arm.notes)


def without(cpu: "CPU", names: "frozenset[str]", why: "str", table: "Mapping[str, Any] | None" = None) -> "CPU":
    """``cpu`` with ``names`` removed (``FATDISPATCH_DISABLE``).

    Removing ``avx`` also removes everything that needs YMM state, and removing
    ``avx512f`` everything that needs ZMM state; the level is recomputed.
    """
    tab = table or _table()
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
