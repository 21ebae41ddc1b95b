"""aarch64 CPU facts, decoded in one place: pure functions of plain data.

Linux tells a process what it may use in two words of its auxiliary vector, ``AT_HWCAP`` and ``AT_HWCAP2``
(``_fatdispatch.hwcaps()`` reads them; the kernel computes them from what *every* core has, so they are the
answer on big.LITTLE parts too).  ``/proc/cpuinfo`` has one ``Features`` line per core: the fallback where the
compiled primitives are missing, read as the features all cores list.  Both are decoded with the bit and name table
in ``_data/cpu_features.json`` (``aarch64.hwcap``, ``aarch64.hwcap2``), and the architecture version (8.0a ...
9.0a) follows from the features with that file's ``aarch64.versions``.  :func:`disagreement` says where the
fallback and the HWCAP answer differ (under qemu 7.2 ``/proc/cpuinfo`` is the x86 host's: nothing in common).

Nothing here reads files or calls the helper: :func:`probe` takes those as arguments, so tests replay
recorded machines (``tests/fixtures/cpu/aarch64/``) through exactly the code a real probe runs.
"""

from ._records import CPU, Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping


def _table(table: "Mapping[str, Any] | None") -> "Mapping[str, Any]":
    if table is None:
        from ._tables import feature_table

        table = feature_table()
    section: "Mapping[str, Any]" = table["aarch64"]
    return section


def known_features(table: "Mapping[str, Any] | None" = None) -> "frozenset[str]":
    """Every feature name the table can decode (the vocabulary of builds' ``requires`` on aarch64)."""
    tab = _table(table)
    return frozenset(tab["hwcap"]) | frozenset(tab["hwcap2"])


def decode_hwcaps(hwcap: "int", hwcap2: "int", table: "Mapping[str, Any] | None" = None) -> "frozenset[str]":
    """The feature names whose bits are set in ``AT_HWCAP``/``AT_HWCAP2``."""
    tab = _table(table)
    feats = {n for n, bit in tab["hwcap"].items() if (hwcap >> bit) & 1}
    feats.update(n for n, bit in tab["hwcap2"].items() if (hwcap2 >> bit) & 1)
    return frozenset(feats)


def cpuinfo_cores(text: "str") -> "list[frozenset[str]]":
    """Each core's ``Features`` line of ``/proc/cpuinfo`` text (every name as written, known or not).

    An x86 file (``flags`` lines, as qemu 7.2 passes the host's through) has no such line: no cores.
    """
    cores = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "features":
            cores.append(frozenset(value.split()))
    return cores


def _looks_x86(text: "str") -> "bool":
    return any(line.partition(":")[0].strip().lower() == "flags" for line in text.splitlines())


def common_features(cores: "Iterable[frozenset[str]]", table: "Mapping[str, Any] | None" = None) -> "frozenset[str]":
    """The known features every core has (big.LITTLE: a build must run on whichever core it is scheduled on)."""
    known = known_features(table)
    out: "frozenset[str] | None" = None
    for core in cores:
        out = core & known if out is None else out & core
    return out or frozenset()


def version(features: "Iterable[str]", table: "Mapping[str, Any] | None" = None) -> "str | None":
    """The highest architecture version (``"8.2a"``) whose mandatory features are all in ``features``.

    ``None`` when even 8.0a's (fp, asimd) are incomplete.  A lower bound: see the table's comment.
    """
    have = set(features)
    versions = _table(table)["versions"]
    best = None
    for name in versions["order"]:
        need: "set[str]" = set()
        at: "str | None" = name
        while at is not None:
            need.update(versions[at]["adds"])
            at = versions[at]["base"]
        if need <= have:
            best = name
    return best


class Disagreement(Record):
    """Known features only one of the two sources reports (both empty: they agree)."""

    __slots__ = ("only_hwcap", "only_cpuinfo")
    only_hwcap: "frozenset[str]"
    only_cpuinfo: "frozenset[str]"

    def __bool__(self) -> "bool":
        return bool(self.only_hwcap or self.only_cpuinfo)

    def describe(self) -> "str":
        parts = []
        if self.only_hwcap:
            parts.append(f"HWCAP has {', '.join(sorted(self.only_hwcap))} that /proc/cpuinfo lacks")
        if self.only_cpuinfo:
            parts.append(f"/proc/cpuinfo lists {', '.join(sorted(self.only_cpuinfo))} that HWCAP lacks")
        return "; ".join(parts) or "HWCAP and /proc/cpuinfo agree"


def disagreement(hwcap_features: "frozenset[str]", cpuinfo_text: "str",
                 table: "Mapping[str, Any] | None" = None) -> "Disagreement":
    """Where the ``/proc/cpuinfo`` fallback (features of every core) and the HWCAP answer differ."""
    known = known_features(table)
    fallback = common_features(cpuinfo_cores(cpuinfo_text), table)
    have = hwcap_features & known
    return Disagreement(only_hwcap=have - fallback, only_cpuinfo=fallback - have)


class Aarch64CPU(Record):
    """What an aarch64 process can use: features, architecture version, where they came from, notes."""

    __slots__ = ("features", "version", "source", "notes")
    features: "frozenset[str]"
    version: "str | None"
    source: "str"
    notes: "tuple[str, ...]"


def _version_note(v: "str | None") -> "str":
    if v is None:
        return "architecture version: below Armv8.0-A (fp or asimd missing)"
    return f"architecture version: Armv{v[:-1]}-A (the highest whose mandatory features are all present)"


def from_hwcaps(hwcap: "int", hwcap2: "int", table: "Mapping[str, Any] | None" = None) -> "Aarch64CPU":
    feats = decode_hwcaps(hwcap, hwcap2, table)
    v = version(feats, table)
    return Aarch64CPU(features=feats, version=v, source="hwcap", notes=(_version_note(v),))


def from_cpuinfo(text: "str", table: "Mapping[str, Any] | None" = None) -> "Aarch64CPU":
    """The fallback: the known features every core's ``Features`` line lists."""
    cores = cpuinfo_cores(text)
    feats = common_features(cores, table)
    v = version(feats, table)
    notes = ["compiled probe unavailable; read /proc/cpuinfo (features every core lists)", _version_note(v)]
    if not cores and _looks_x86(text):
        notes.append("/proc/cpuinfo describes an x86 CPU, not this aarch64 process's (an emulator passing the "
                     "host's file through, e.g. qemu-user before 8.0?): no features are known")
    if len(cores) > 1 and any(c & known_features(table) != feats for c in cores):
        notes.append(f"cores differ in features (big.LITTLE?): using the {len(feats)} that all {len(cores)} have")
    return Aarch64CPU(features=feats, version=v, source="proc-cpuinfo", notes=tuple(notes))


def probe(hwcaps: "Callable[[], tuple[int, int]] | None", read_cpuinfo: "Callable[[], str | None]",
          table: "Mapping[str, Any] | None" = None) -> "Aarch64CPU":
    """HWCAP where the helper can read it, else the ``/proc/cpuinfo`` fallback, else no features."""
    if hwcaps is not None:
        h1, h2 = hwcaps()
        return from_hwcaps(h1, h2, table)
    text = read_cpuinfo()
    if text is not None:
        return from_cpuinfo(text, table)
    return Aarch64CPU(features=frozenset(), version=None, source="none",
                      notes=("no CPU probe works here: only builds that require no features are usable",))


# ---------------------------------------------------------------- the raw read, and the probe's CPU record


def read_proc_cpuinfo(path: "str" = "/proc/cpuinfo") -> "str | None":
    """The whole file (every core's block: a 64-core server's is ~30 KiB), or None where it cannot be read."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def probe_cpu_record(hwcaps: "Callable[[], tuple[int, int]] | None",
                     read_cpuinfo: "Callable[[], str | None]" = read_proc_cpuinfo) -> "CPU":
    """:func:`probe` as the :class:`~fatdispatch._records.CPU` the rest of fatdispatch takes (version in its notes)."""
    facts = probe(hwcaps, read_cpuinfo)
    return CPU(arch="aarch64", features=facts.features, x86_64_level=None, vendor="", source=facts.source,
               notes=facts.notes)
