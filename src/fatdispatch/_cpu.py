"""The CPU probe: what this process's CPU can run.

Raw probes ask the hardware or the OS and return plain data (CPUID registers
and XCR0 from ``_fatdispatch.x86()``); pure decoders turn raw data into a
:class:`CPU` (``x86_from_cpuid`` here; /proc/cpuinfo, auxv and sysctl decoders
in :mod:`fatdispatch._slowpath`), so tests replay recorded machines through
them.  On x86 the host is probed and decoded in one compiled call,
``_fatdispatch.cpu()``, which is also the probe for callers that want no
package import.  :func:`probe_cpu` caches the answer for the life of the
process.  CPU facts are never cached on disk: valgrind, qemu and VM migration
change them (the pick cache keys on the raw words instead, re-read every time).

Kept small and apart from :mod:`fatdispatch._runtime`: a cold probe costs this
module and the compiled helper, nothing else.
"""

import _thread
import sys

import os

from . import native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Iterator, Mapping, TypeVar

    _R = TypeVar("_R", bound="Record")


class Record:
    """Small immutable value records (``dataclasses`` imports ``inspect``: milliseconds).

    Subclasses list their fields in ``__slots__``.
    """

    __slots__: "tuple[str, ...]" = ()

    def __init__(self, *args: "Any", **kwargs: "Any") -> None:
        fields = self.__slots__
        setter = object.__setattr__
        if not args and len(kwargs) == len(fields):  # the common, all-keywords case
            try:
                for key in fields:
                    setter(self, key, kwargs[key])
                return
            except KeyError:
                pass
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields or key in values:
                raise TypeError(f"{type(self).__name__}: bad field {key!r}")
            values[key] = value
        missing = [f for f in fields if f not in values]
        if missing:
            raise TypeError(f"{type(self).__name__}: missing {', '.join(missing)}")
        for key in fields:
            setter(self, key, values[key])

    def __setattr__(self, key: str, value: "Any") -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __iter__(self) -> "Iterator[Any]":
        return (getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: "object") -> bool:
        return type(other) is type(self) and tuple(self) == tuple(other)  # type: ignore[arg-type,unused-ignore]

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self))

    def __repr__(self) -> str:
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({body})"

    def replace(self: "_R", **changes: "Any") -> "_R":
        values = {f: getattr(self, f) for f in self.__slots__}
        values.update(changes)
        return type(self)(**values)


class CPU(Record):
    """What the CPU can run, as seen by this process.

    ``features`` holds canonical lower-case names (``sse4_2``, ``avx2``,
    ``avx512f``) that are usable: present in CPUID *and* enabled by the OS.
    ``x86_64_level`` is the psABI level (1-4) on x86-64, else ``None``.
    ``notes`` explains every feature that was present but is not usable.
    """

    __slots__ = ("arch", "features", "x86_64_level", "vendor", "source", "notes")
    arch: str
    features: "frozenset[str]"
    x86_64_level: "int | None"
    vendor: str
    source: str
    notes: "tuple[str, ...]"


def x86_64_level(features: "frozenset[str] | set[str]", table: "Mapping[str, Any] | None" = None) -> int:
    """The highest psABI level whose features, and those of every lower level, are all present.

    Levels nest: with AVX2 masked off, AVX-512F alone does not make a v4 machine.
    Returns 0 when even v1 is incomplete (an emulator with a trimmed CPU model).
    The levels come from the feature table (``table``) or, by default, the copy
    compiled into ``_fatdispatch`` from that same table.
    """
    mod = native() if table is None else None
    levels = mod.x86_levels() if mod is not None and hasattr(mod, "x86_levels") else None
    if levels is None:
        from ._runtime import feature_table

        levels = [(table or feature_table())["x86"]["levels"][n] for n in ("1", "2", "3", "4")]
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


def x86_from_cpuid(raw: "Mapping[str, Any]", arch: str = "x86_64", source: str = "cpuid") -> "CPU":
    """Turn raw CPUID leaves and XCR0 into a :class:`CPU` (pure).

    ``raw`` has the keys ``_fatdispatch.x86()`` returns: ``max_leaf``, ``vendor``,
    ``"1"``, ``"7"``, ``"7.1"``, ``max_ext``, ``"0x80000001"`` (each a 4-tuple
    EAX, EBX, ECX, EDX), ``xcr0`` (``None`` when OSXSAVE is off), and optionally
    ``amx_permission`` (``False`` when Linux refused AMX state),
    ``macos_avx512`` (macOS enables the AVX-512 state lazily and says so in a
    sysctl) and ``translated`` (Rosetta 2).  The bits are decoded by
    ``_fatdispatch.x86_decode`` with the table compiled from ``_data/cpu_features.json``.
    """
    mod = native()
    if mod is None or not hasattr(mod, "x86_decode"):
        from ._errors import FatDispatchError

        raise FatDispatchError("fatdispatch's compiled helper (_fatdispatch) is missing: reinstall fatdispatch")
    usable, masked = mod.x86_decode(dict(raw))
    return CPU(arch=arch, features=usable, x86_64_level=x86_64_level(usable) if arch == "x86_64" else None,
               vendor=str(raw.get("vendor", "")), source=source, notes=masked_notes(masked, raw))


def masked_notes(masked: "Iterable[tuple[str, str, int, frozenset[str]]]", raw: "Mapping[str, Any]") -> "tuple[str, ...]":
    """One sentence per group of present-but-unusable features (``x86_decode``'s second item)."""
    return tuple(_MASKED[why].format(names=", ".join(sorted(names)), group=group.upper(), mask=mask,
                                     xcr0=raw.get("xcr0") or 0) for why, group, mask, names in masked)


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    if m in ("i386", "i486", "i586", "i686", "x86"):
        return "i686"
    return m


def _machine() -> str:
    if sys.platform == "win32":
        return normalize_arch(os.environ.get("PROCESSOR_ARCHITECTURE", "AMD64"))
    return normalize_arch(os.uname().machine)


_cpu_lock = _thread.allocate_lock()
_cpu_cached: "CPU | None" = None
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


def _probe_cpu_uncached() -> "CPU":
    mod = native()
    if mod is not None and hasattr(mod, "cpu") and _machine() == "x86_64":
        found = mod.cpu()  # x86() and x86_decode() in one call; x86_from_cpuid(found["raw"]) gives the same CPU
        return CPU(arch=found["arch"], features=found["features"], x86_64_level=found["x86_64_level"],
                   vendor=found["vendor"], source="cpuid", notes=masked_notes(found["masked"], found["raw"]))
    from ._slowpath import probe_other_cpu

    return probe_other_cpu(_machine(), native())


