"""The CUDA rules, as NVIDIA documents them: which GPU code runs on which GPU, under which driver, and which
GPUs ``CUDA_VISIBLE_DEVICES`` leaves a process.

Pure functions of plain data (target strings, ``(major, minor)`` tuples, a mapping for the environment); this
module imports nothing from fatdispatch, so any layer may use it. The documents each rule follows:

* [PG] CUDA C++ Programming Guide, "Binary Compatibility", "PTX Compatibility", "Application Compatibility" and
  the family-specific/architecture-specific feature table (compute capabilities appendix), CUDA 12.9-13.0.
* [CG] CUDA Compatibility guide (docs.nvidia.com/deploy/cuda-compatibility), "Minor Version Compatibility" and
  its driver table (12.x: >= 525.60.13; 13.x: >= 580).
* [PT] PyTorch ``torch/cuda/__init__.py``: ``_parse_visible_devices`` and ``_transform_uuid_to_ordinals``
  (how ``CUDA_VISIBLE_DEVICES`` is read, mirroring the CUDA driver's own parser).
* [MIG] NVIDIA MIG User Guide, "CUDA Device Enumeration" (``MIG-<uuid>`` and the older
  ``MIG-GPU-<gpu uuid>/<gpu instance>/<compute instance>`` form).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence, TypeVar

    D = TypeVar("D")

# [PG] Tegra (Jetson/DRIVE) integrated GPUs: TK1 3.2, TX1 5.3, TX2 6.2, Xavier 7.2, Orin 8.7, Thor (10.1 until
# CUDA 12.9, 11.0 from CUDA 13). No SASS compatibility with desktop parts, nor across Tegra minors.
TEGRA_CAPABILITIES = frozenset({(3, 2), (5, 3), (6, 2), (7, 2), (8, 7), (10, 1), (11, 0)})

# [CG] The oldest driver branch each CUDA major runs on (minor-version compatibility needs at least this).
DRIVER_FLOORS = {11: 450, 12: 525, 13: 580}

EXACT_SASS, COMPATIBLE_SASS, PTX_JIT, NO_FIT = 3, 2, 1, 0


def parse_target(target: "str") -> "tuple[int, int, str]":
    """``"90"`` -> (9, 0, ""), ``"90a"`` -> (9, 0, "a"), ``"100f"`` -> (10, 0, "f"); ValueError otherwise."""
    suffix = ""
    if target and target[-1] in "af":
        target, suffix = target[:-1], target[-1]
    if not (2 <= len(target) <= 3) or not target.isdigit() or not target.isascii():
        raise ValueError(f"expected an SM number such as '90', '90a' or '100f', not {target!r}")
    return int(target[:-1]), int(target[-1]), suffix


def is_tegra(cc: "tuple[int, int]") -> "bool":
    return tuple(cc) in TEGRA_CAPABILITIES


def sass_fit(target: "str", cc: "tuple[int, int]", tegra: "bool | None" = None) -> "int":
    """How one cubin ``sm_<target>`` fits a GPU of capability ``cc``: EXACT_SASS, COMPATIBLE_SASS or NO_FIT.

    [PG] ``sm_XY`` runs on X.Z for Z >= Y (same major); ``sm_XYa`` only on X.Y; ``sm_XYf`` on its family, the
    same major at an equal or higher minor (100f: 10.0 and 10.3). On a Tegra part only a cubin built for
    exactly that capability runs, and a Tegra cubin runs on nothing else.
    """
    major, minor, suffix = parse_target(target)
    cc = (int(cc[0]), int(cc[1]))
    if cc == (major, minor):
        return EXACT_SASS
    if (is_tegra(cc) if tegra is None else tegra) or (major, minor) in TEGRA_CAPABILITIES or suffix == "a":
        return NO_FIT
    return COMPATIBLE_SASS if cc[0] == major and cc[1] > minor else NO_FIT


def ptx_fit(target: "str", cc: "tuple[int, int]") -> "int":
    """How PTX ``compute_<target>`` fits: PTX_JIT or NO_FIT.

    [PG] Plain ``compute_XY`` JIT-compiles for any capability >= X.Y (Tegra included); ``compute_XYf`` only
    inside its family (same major, minor >= Y: compute_100f never runs on 11.0 or 12.0); ``compute_XYa``
    only on X.Y.
    """
    major, minor, suffix = parse_target(target)
    cc = (int(cc[0]), int(cc[1]))
    if suffix == "a":
        return PTX_JIT if cc == (major, minor) else NO_FIT
    if suffix == "f":
        return PTX_JIT if cc[0] == major and cc[1] >= minor else NO_FIT
    return PTX_JIT if cc >= (major, minor) else NO_FIT


def sm_fit(sass: "Sequence[str]", ptx: "Sequence[str]", cc: "tuple[int, int]", tegra: "bool | None" = None) -> "int":
    """How a build's code fits one GPU: EXACT_SASS 3, COMPATIBLE_SASS 2, PTX_JIT 1, NO_FIT 0 (the best of its
    targets; SASS wins over PTX because the driver prefers a fitting cubin to JIT). ``tegra`` defaults to
    whether ``cc`` is a Tegra capability."""
    best = max((sass_fit(t, cc, tegra) for t in sass), default=NO_FIT)
    if best:
        return best
    return max((ptx_fit(t, cc) for t in ptx), default=NO_FIT)


def exact_rank(sass: "Sequence[str]", cc: "tuple[int, int]") -> "int":
    """Among cubins for exactly ``cc``: 3 for ``sm_XYa``, 2 for ``sm_XYf``, 1 for plain ``sm_XY``, 0 for none.

    [PG] family-specific features are a superset of the baseline, architecture-specific ones a superset of the
    family's, so on the exact capability ``a`` > ``f`` > plain (manifest order must not decide).
    """
    rank = 0
    for t in sass:
        major, minor, suffix = parse_target(t)
        if (major, minor) == (int(cc[0]), int(cc[1])):
            rank = max(rank, {"a": 3, "f": 2}.get(suffix, 1))
    return rank


def driver_floor(cuda_major: "int") -> "int | None":
    """[CG] The lowest driver branch for a CUDA major (12 -> 525, 13 -> 580), None where not tabulated."""
    return DRIVER_FLOORS.get(cuda_major)


def _branch(driver_version: "str | None") -> "int | None":
    head = (driver_version or "").split(".")[0]
    return int(head) if head.isdigit() and head.isascii() else None


def runtime_ok(runtime: "tuple[int, int]", driver_cuda: "tuple[int, int] | None", has_sass: "bool", has_ptx: "bool",
               driver_version: "str | None" = None) -> "tuple[bool, str | None]":
    """Whether code built with CUDA ``runtime`` runs under a driver supporting CUDA ``driver_cuda``.

    ``has_sass``/``has_ptx``: whether the code that would run on the GPU is a cubin or PTX. Returns
    ``(True, None)``, ``(True, note)`` under minor-version compatibility, or ``(False, reason)``.

    [CG] A driver runs everything built with its CUDA version or older. Within one major, a cubin built with a
    newer minor also runs (minor-version compatibility, with a limited feature set) on a driver at or above
    the major's floor; PTX from a newer toolkit does not JIT (cudaErrorUnsupportedPtxVersion, 222). Across
    majors nothing newer runs.
    """
    need = f"{runtime[0]}.{runtime[1]}"
    floor = driver_floor(runtime[0])
    update = (f"update the NVIDIA driver (CUDA {runtime[0]}.x needs driver >= {floor})" if floor
              else "update the NVIDIA driver")
    if driver_cuda is None:
        return False, f"built with CUDA {need}, but the driver reports no CUDA version: {update}"
    have = f"{driver_cuda[0]}.{driver_cuda[1]}"
    if tuple(driver_cuda) >= tuple(runtime):
        return True, None
    if driver_cuda[0] != runtime[0]:
        return False, f"built with CUDA {need}, but the driver supports CUDA {have}: {update}"
    update = f"update the NVIDIA driver to one supporting CUDA {need} or later"
    branch = _branch(driver_version)
    if floor is not None and branch is not None and branch < floor:
        return False, (f"built with CUDA {need}; driver {driver_version} is below the CUDA {runtime[0]}.x floor: "
                       f"update the NVIDIA driver (CUDA {runtime[0]}.x needs driver >= {floor})")
    if has_sass:
        return True, (f"built with CUDA {need} on a CUDA {have} driver: runs under minor-version compatibility "
                      f"(features newer than {have} are unavailable)")
    return False, (f"built with CUDA {need}, but the driver supports CUDA {have}: its PTX cannot be JIT-compiled "
                   f"by an older driver (minor-version compatibility covers SASS only); {update}"
                   if has_ptx else f"built with CUDA {need}, but the driver supports CUDA {have}: {update}")


def _strtoul(text: "str") -> "int":
    """[PT] ``_strtoul``: the leading optional sign and digits as an int (``"+1"`` 1, ``"-0"`` 0, ``"1gpu"`` 1);
    -1 where there are no digits (``strtoul`` then reads nothing and CUDA stops the list)."""
    end = 0
    for i, ch in enumerate(text):
        if ch.isdigit() and ch.isascii():
            end = i + 1
        elif not (i == 0 and ch in "+-"):
            break
    digits = text[:end]
    return int(digits) if digits and digits not in "+-" else -1


def _mig_ids(device: "Any") -> "Sequence[tuple[int, int] | None]":
    ids = getattr(device, "mig_ids", None)
    return ids if ids is not None else [None] * len(device.mig_uuids)


def visible_gpus(devices: "Sequence[D]", env: "Mapping[str, str]") -> "tuple[tuple[D, ...], str | None]":
    """The physical GPUs CUDA shows this process (each once, in the order named), and a note where that is
    uncertain or empty.

    ``devices`` are in NVML (PCI bus) order, each with ``uuid``, ``compute_capability``, ``mig_uuids`` and
    optionally ``mig_ids`` (each MIG instance's ``(gpu instance, compute instance)``). Following [PT]:

    * unset: every GPU; ``CUDA_VISIBLE_DEVICES=""`` none;
    * a value starting with ``GPU-`` (or ``MIG-``) is a list of such entries, unstripped and case-sensitive:
      an entry without the prefix ends the list; a prefix matching no device, or several, ends it; two entries
      naming one device (``GPU-abc,GPU-abc1`` included) leave none;
    * otherwise each entry is read as ``strtoul`` does (``+1`` is 1, ``-0`` is 0, ``1gpu`` is 1); no digits, a
      negative number or an index past the last device ends the list; a repeated index leaves none.

    MIG entries [MIG] are matched per MIG instance (a prefix matching two instances, even of one GPU, is
    ambiguous); ``MIG-GPU-<uuid>/<gi>/<ci>`` names the instance by its parent and ids. The CUDA order of
    indices is fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: where models differ an index may be any
    device, so every device is returned with a note, and a build must run on all of them.
    """
    devs = tuple(devices)
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return devs, None
    chosen: "list[D]" = []
    keys: "list[object]" = []
    uncertain = False
    duplicate = False
    if value.startswith("GPU-") or value.startswith("MIG-"):
        prefix = value[:4]
        for entry in value.split(","):
            if not entry.startswith(prefix):
                break
            found = _by_uuid(devs, entry) if prefix == "GPU-" else _by_mig(devs, entry)
            if found is None:
                break  # unknown or ambiguous: the list ends here
            key, dev = found
            if key in keys:
                duplicate = True
                break
            keys.append(key)
            chosen.append(dev)
    else:
        pci_order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").strip().upper() == "PCI_BUS_ID"
        uniform = len({tuple(getattr(d, "compute_capability")) for d in devs}) <= 1
        for entry in value.split(","):
            idx = _strtoul(entry.strip())
            if idx < 0 or idx >= len(devs):
                break
            if idx in keys:
                duplicate = True
                break
            keys.append(idx)
            chosen.append(devs[idx])
            uncertain = uncertain or not (pci_order or uniform)
    if duplicate:
        return (), f"CUDA_VISIBLE_DEVICES={value!r} names a device twice, so CUDA shows none"
    if uncertain:
        return devs, ("CUDA_VISIBLE_DEVICES uses indices with mixed GPU models and CUDA_DEVICE_ORDER is not "
                      "PCI_BUS_ID: CUDA orders them fastest first, so a build must run on every GPU")
    out: "list[D]" = []
    for d in chosen:  # two MIG instances of one GPU: the GPU once
        if not any(d is o for o in out):
            out.append(d)
    if not out:
        return (), f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"
    return tuple(out), None


def _by_uuid(devs: "Sequence[D]", entry: "str") -> "tuple[object, D] | None":
    matches = [d for d in devs if str(getattr(d, "uuid")).startswith(entry)]
    return (("gpu", id(matches[0])), matches[0]) if len(matches) == 1 else None


def _by_mig(devs: "Sequence[D]", entry: "str") -> "tuple[object, D] | None":
    if entry.startswith("MIG-GPU-") and entry.count("/") == 2:  # the older form: MIG-GPU-<uuid>/<gi>/<ci>
        uuid, gi, ci = entry[len("MIG-"):].split("/")
        if not (gi.isdigit() and ci.isdigit() and gi.isascii() and ci.isascii()):
            return None
        for d in devs:
            if getattr(d, "uuid") != uuid or not getattr(d, "mig_uuids"):
                continue
            for k, ids in enumerate(_mig_ids(d)):
                if ids is None or ids == (int(gi), int(ci)):  # ids unknown: the parent is known, take it
                    return ("mig", id(d), k if ids is not None else (int(gi), int(ci))), d
        return None
    matches = [(d, k) for d in devs for k, m in enumerate(getattr(d, "mig_uuids")) if str(m).startswith(entry)]
    if len(matches) != 1:
        return None
    d, k = matches[0]
    return ("mig", id(d), k), d
