"""NVIDIA's compatibility rules, as pure functions of plain data: which GPU code runs on which GPU, which
CUDA runtime a driver accepts, and which GPUs ``CUDA_VISIBLE_DEVICES`` shows.  No I/O, no probing; the
sources are named in ``../shared/REFERENCE.md`` (CUDA C++ Programming Guide, CUDA Compatibility guide).
"""

from ._manifest import parse_sm
from ._records import GPU, CudaTargets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Sequence

MATCH_NAMES = {3: "exact SASS", 2: "compatible SASS", 1: "PTX (JIT-compiled at first load)"}
DRIVER_FLOORS = {12: 525, 13: 580}  # the lowest driver branch of each CUDA major


def targets_text(cuda: "CudaTargets") -> "str":
    return ", ".join([f"sm_{t}" for t in cuda.sass] + [f"compute_{t} (PTX)" for t in cuda.ptx])


def max_sm(cuda: "CudaTargets | None") -> "int":
    if cuda is None:
        return 0
    return max((major * 10 + minor for major, minor, _ in map(parse_sm, cuda.sass + cuda.ptx)), default=0)


def runtime_problem(runtime: "tuple[int, int]", driver: "tuple[int, int] | None") -> "str | None":
    """Why a build made with CUDA ``runtime`` cannot run on a driver supporting CUDA ``driver``, or None."""
    if driver is not None and driver >= runtime:
        return None
    have = f"{driver[0]}.{driver[1]}" if driver else "unknown"
    floor = DRIVER_FLOORS.get(runtime[0])
    need = f" (CUDA {runtime[0]} needs driver >= {floor})" if floor else ""
    return (f"built with CUDA {runtime[0]}.{runtime[1]}, but the driver supports CUDA {have}: "
            f"update the NVIDIA driver{need}")


def sm_fit(sass: "tuple[str, ...]", ptx: "tuple[str, ...]", cc: "tuple[int, int]") -> "int":
    """How a CUDA build's code fits one GPU: 3 exact SASS, 2 compatible SASS, 1 PTX, 0 none.

    Real ``sm_XY`` SASS runs on X.Y' with the same major and Y' >= Y; ``sm_XYa``
    only on exactly X.Y; ``sm_XYf`` on the same major with Y' >= Y (its family);
    PTX ``compute_XY`` JIT-compiles for any capability >= X.Y (``compute_XYa``
    only for exactly X.Y).
    """
    best = 0
    for t in sass:
        major, minor, suffix = parse_sm(t)
        if suffix == "a":
            fit = 3 if cc == (major, minor) else 0
        elif cc[0] == major and cc[1] >= minor:
            fit = 3 if cc[1] == minor else 2
        else:
            fit = 0
        best = max(best, fit)
    if best:
        return best
    for t in ptx:
        major, minor, suffix = parse_sm(t)
        if (suffix == "a" and cc == (major, minor)) or (suffix != "a" and cc >= (major, minor)):
            return 1
    return 0


def _strtoul_prefix(text: "str") -> "int | None":
    """The leading decimal digits of ``text`` as CUDA's strtoul reads them, or None."""
    digits = ""
    for ch in text:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    return int(digits) if digits else None


def visible_gpus(gpus: "Sequence[GPU]", env: "Mapping[str, str]") -> "tuple[tuple[GPU, ...], str | None]":
    """The devices CUDA would show this process, and a note where it is uncertain.

    Follows CUDA's rules for ``CUDA_VISIBLE_DEVICES``: unset means all; an empty
    value or ``-1`` means none; entries are indices, ``GPU-<uuid prefix>`` or
    ``MIG-<uuid>``; an invalid, out-of-range, negative or ambiguous entry ends
    the list; a duplicate hides every device.  CUDA numbers devices fastest
    first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; where that order cannot be
    known (mixed models) an index is mapped to *every* device, so that the
    chosen build runs whichever one it is.
    """
    devices = tuple(gpus)
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return devices, None
    pci_order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").strip().upper() == "PCI_BUS_ID"
    uniform = len({g.compute_capability for g in devices}) <= 1
    chosen: "list[GPU]" = []
    note = None
    uncertain = False
    seen: "set[str]" = set()
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            break
        upper = entry.upper()
        if upper.startswith("GPU-") or upper.startswith("MIG-"):
            prefix = entry.lower()
            if upper.startswith("MIG-"):
                matches = [g for g in devices if any(m.lower().startswith(prefix) for m in g.mig_uuids)]
            else:
                matches = [g for g in devices if g.uuid.lower().startswith(prefix)]
            if len(matches) != 1:
                break  # unknown or ambiguous UUID ends the list
            gpu = matches[0]
            key = prefix
        else:
            if entry.startswith("-") or entry.startswith("+"):
                break
            idx = _strtoul_prefix(entry)
            if idx is None or idx >= len(devices):
                break
            key = f"#{idx}"
            if pci_order or uniform:
                gpu = devices[idx]
            else:
                uncertain = True
                gpu = devices[idx]
        if key in seen:
            return (), "CUDA_VISIBLE_DEVICES names a device twice, so CUDA shows none"
        seen.add(key)
        chosen.append(gpu)
    if uncertain:
        note = ("CUDA_VISIBLE_DEVICES uses indices with mixed GPU models and CUDA_DEVICE_ORDER is not "
                "PCI_BUS_ID: CUDA orders them fastest first, so a build must run on every GPU")
        return devices, note
    result: "list[GPU]" = []
    for g in chosen:
        if g not in result:
            result.append(g)
    if not result:
        note = f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"
    return tuple(result), note
