"""fatdispatch's immutable value types: what the probes find, what a manifest says, what a decision is.

Plain records with named fields, compared and hashed by value.  Not :mod:`dataclasses` (it imports
:mod:`inspect`, milliseconds on the import path); mypy checks them as dataclasses all the same
(``dataclass_transform``), so ``Variant(nmae="typo", kind=3)`` fails type checking.  Imports nothing.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator, TypeVar

    from typing_extensions import dataclass_transform

    _R = TypeVar("_R", bound="Record")
else:
    def dataclass_transform(**_: "object") -> "object":
        return lambda cls: cls


@dataclass_transform(frozen_default=True)
class Record:
    """Base of the value types: subclasses list their fields in ``__slots__`` and annotate them."""

    __slots__: "tuple[str, ...]" = ()

    def __init__(self, *args: "Any", **kwargs: "Any") -> "None":
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

    def __setattr__(self, key: "str", value: "Any") -> "None":
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __iter__(self) -> "Iterator[Any]":
        return (getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: "object") -> "bool":
        return type(other) is type(self) and tuple(self) == tuple(other)  # type: ignore[arg-type,unused-ignore]

    def __hash__(self) -> "int":
        return hash((type(self).__name__, *self))

    def __repr__(self) -> "str":
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({body})"

    def replace(self: "_R", **changes: "Any") -> "_R":
        values = {f: getattr(self, f) for f in self.__slots__}
        values.update(changes)
        return type(self)(**values)


# ---------------------------------------------------------------- the CPU


class CPU(Record):
    """What the CPU can run, as seen by this process.

    ``features`` holds canonical lower-case names (``sse4_2``, ``avx2``, ``avx512f``) that are usable:
    present in CPUID *and* enabled by the OS.  ``x86_64_level`` is the psABI level (0-4) on x86-64, else
    ``None``.  ``notes`` explains every feature that was present but is not usable.
    """

    __slots__ = ("arch", "features", "x86_64_level", "vendor", "source", "notes")
    arch: "str"
    features: "frozenset[str]"
    x86_64_level: "int | None"
    vendor: "str"
    source: "str"
    notes: "tuple[str, ...]"


# ---------------------------------------------------------------- the manifest


class CudaTargets(Record):
    """The GPU code a CUDA build carries: SASS targets (``"90"``, ``"90a"``, ``"100f"``), PTX targets, and
    the CUDA runtime version it was built with."""

    __slots__ = ("sass", "ptx", "runtime")
    sass: "tuple[str, ...]"
    ptx: "tuple[str, ...]"
    runtime: "tuple[int, int]"


class Variant(Record):
    """One build of a fat module, as its manifest describes it."""

    __slots__ = ("name", "kind", "file", "arch", "priority", "features", "x86_64_level", "cuda", "properties")
    name: "str"
    kind: "str"
    file: "str"
    arch: "str"
    priority: "int"
    features: "frozenset[str]"
    x86_64_level: "int | None"
    cuda: "CudaTargets | None"
    properties: "tuple[str, ...]"


class Manifest(Record):
    __slots__ = ("module", "schema", "generator", "variants", "path")
    module: "str"
    schema: "int"
    generator: "str"
    variants: "tuple[Variant, ...]"
    path: "str"

    @property
    def has_cuda(self) -> "bool":
        return any(v.kind == "cuda" for v in self.variants)


# ---------------------------------------------------------------- the GPUs


class GPU(Record):
    """One physical NVIDIA GPU, in NVML (PCI bus) order."""

    __slots__ = ("index", "name", "uuid", "compute_capability", "mig_uuids")
    index: "int"
    name: "str"
    uuid: "str"
    compute_capability: "tuple[int, int]"
    mig_uuids: "tuple[str, ...]"


class GPUs(Record):
    """What the NVIDIA driver offers this process.

    ``reason`` is ``None`` when CUDA builds may be considered, else why not (no driver, NVML error, no
    libcuda...).  ``cuda_driver_version`` is the highest CUDA version the driver supports, ``(major, minor)``.
    """

    __slots__ = ("devices", "driver_version", "cuda_driver_version", "libcuda", "source", "reason")
    devices: "tuple[GPU, ...]"
    driver_version: "str"
    cuda_driver_version: "tuple[int, int] | None"
    libcuda: "bool"
    source: "str"
    reason: "str | None"


def no_gpus(reason: "str", source: "str" = "none") -> "GPUs":
    return GPUs(devices=(), driver_version="", cuda_driver_version=None, libcuda=False, source=source, reason=reason)


NO_GPU_PROBE = no_gpus("not probed: this module has no CUDA build or FATDISPATCH_FORCE rules CUDA out", "skipped")


# ---------------------------------------------------------------- decisions


class Hardware(Record):
    __slots__ = ("cpu", "gpu")
    cpu: "CPU"
    gpu: "GPUs"


class Candidate(Record):
    """One build, whether it can run here (``usable``), and why it was or was not chosen."""

    __slots__ = ("variant", "usable", "reason", "score")
    variant: "Variant"
    usable: "bool"
    reason: "str"
    score: "tuple[int, ...]"


class Selection(Record):
    """The ranked decision for one fat module.

    ``order`` names the builds the loader tries, in order (normally every usable build, best first).
    ``error`` is set when nothing may be loaded, with the reason; ``candidates`` lists every build, ``order``
    first.  ``cacheable`` is False for a decision the environment shaped (``FATDISPATCH_FORCE``,
    ``FATDISPATCH_DISABLE``, ``FATDISPATCH_UNSAFE_FORCE``), which is never remembered.
    """

    __slots__ = ("module", "candidates", "order", "forced", "hardware", "notes", "error", "cacheable")
    module: "str"
    candidates: "tuple[Candidate, ...]"
    order: "tuple[str, ...]"
    forced: "str | None"
    hardware: "Hardware"
    notes: "tuple[str, ...]"
    error: "str | None"
    cacheable: "bool"

    @property
    def chosen(self) -> "str | None":
        return self.order[0] if self.order else None

    def candidate(self, name: "str") -> "Candidate":
        for c in self.candidates:
            if c.variant.name == name:
                return c
        raise KeyError(name)


class LoadRecord(Record):
    """What happened when a fat module was imported: the build bound (None if none), its file, the decision,
    and every build that failed to load before it, with why."""

    __slots__ = ("module", "variant", "path", "selection", "attempts")
    module: "str"
    variant: "str | None"
    path: "str | None"
    selection: "Selection"
    attempts: "tuple[tuple[str, str], ...]"
