"""The NVIDIA GPU probe.

* Where no NVIDIA driver is installed it costs one ``stat`` and imports nothing.
* Otherwise it asks NVML (``libnvidia-ml.so.1`` through :mod:`ctypes`, never
  ``pynvml``, whose import alone costs ~30 ms) for every device's compute
  capability and the driver's CUDA version, and checks that the CUDA driver
  library ``libcuda.so.1`` is really there (containers often mount NVML alone).
* It never initialises CUDA in this process: ``cuInit`` breaks CUDA in forked
  children.
* The answer is cached per user, keyed by boot id, driver version and the set
  of GPUs, so most process starts skip NVML entirely.  The cache only ever
  narrows what is usable: a build that fails to load with it in use drops it.

``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` are applied afterwards by the
pure :func:`visible_gpus`, so the cache does not depend on them.
"""

from __future__ import annotations

import _thread
import os
import sys

from . import _jsonfile
from ._records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Sequence

CACHE_SCHEMA = 1
NVML_TIMEOUT_S = 5.0


class GPU(Record):
    """One physical NVIDIA GPU, in NVML (PCI bus) order."""

    __slots__ = ("index", "name", "uuid", "compute_capability", "mig_uuids")
    index: int
    name: str
    uuid: str
    compute_capability: tuple[int, int]
    mig_uuids: tuple[str, ...]


class GPUs(Record):
    """What the NVIDIA driver offers this process.

    ``reason`` is ``None`` when CUDA builds may be considered, else why not
    (no driver, NVML error, no libcuda...).  ``cuda_driver_version`` is the
    highest CUDA version the driver supports, as ``(major, minor)``.
    """

    __slots__ = ("devices", "driver_version", "cuda_driver_version", "libcuda", "source", "reason")
    devices: tuple[GPU, ...]
    driver_version: str
    cuda_driver_version: tuple[int, int] | None
    libcuda: bool
    source: str
    reason: str | None


NO_GPU_PROBE = GPUs(devices=(), driver_version="", cuda_driver_version=None, libcuda=False, source="skipped",
                    reason="not probed: this module has no CUDA build or FATDISPATCH_FORCE rules CUDA out")


def no_gpus(reason: str, source: str = "none") -> GPUs:
    return GPUs(devices=(), driver_version="", cuda_driver_version=None, libcuda=False, source=source, reason=reason)


# ---------------------------------------------------------------- visibility (pure)


def _strtoul_prefix(text: str) -> int | None:
    """The leading decimal digits of ``text`` as CUDA's strtoul reads them, or None."""
    digits = ""
    for ch in text:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    return int(digits) if digits else None


def visible_gpus(gpus: Sequence[GPU], env: Mapping[str, str]) -> tuple[tuple[GPU, ...], str | None]:
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
    chosen: list[GPU] = []
    note = None
    uncertain = False
    seen: set[str] = set()
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
    result: list[GPU] = []
    for g in chosen:
        if g not in result:
            result.append(g)
    if not result:
        note = f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"
    return tuple(result), note


# ---------------------------------------------------------------- NVML (raw)


class NvmlError(Exception):
    """An NVML call failed; ``code`` is the ``nvmlReturn_t`` value."""

    NAMES = {1: "Uninitialized", 2: "InvalidArgument", 3: "NotSupported", 4: "NoPermission", 6: "NotFound",
             9: "DriverNotLoaded", 10: "Timeout", 12: "LibraryNotFound", 13: "FunctionNotFound", 15: "GpuIsLost",
             18: "LibRmVersionMismatch", 999: "Unknown"}

    def __init__(self, code: int, call: str) -> None:
        self.code = code
        self.call = call
        super().__init__(f"{call} failed: NVML_ERROR_{self.NAMES.get(code, str(code))} ({code})")


class CtypesNvml:
    """The few NVML calls the probe needs, through ctypes (``libnvidia-ml.so.1``)."""

    def __init__(self) -> None:
        import ctypes

        self._ct = ctypes
        names = ["nvml.dll"] if sys.platform == "win32" else ["libnvidia-ml.so.1", "/usr/lib/wsl/lib/libnvidia-ml.so.1"]
        lib = None
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise NvmlError(12, "dlopen(libnvidia-ml.so.1)")
        self._lib = lib

    def _call(self, name: str, *args: Any) -> None:
        try:
            fn = getattr(self._lib, name)
        except AttributeError:
            raise NvmlError(13, name) from None
        rc = fn(*args)
        if rc != 0:
            raise NvmlError(int(rc), name)

    def init(self) -> None:
        self._call("nvmlInit_v2")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def driver_version(self) -> str:
        buf = self._ct.create_string_buffer(96)
        self._call("nvmlSystemGetDriverVersion", buf, 96)
        return buf.value.decode("ascii", "replace")

    def cuda_driver_version(self) -> int:
        v = self._ct.c_int(0)
        self._call("nvmlSystemGetCudaDriverVersion_v2", self._ct.byref(v))
        return int(v.value)

    def device_count(self) -> int:
        n = self._ct.c_uint(0)
        self._call("nvmlDeviceGetCount_v2", self._ct.byref(n))
        return int(n.value)

    def handle(self, index: int) -> Any:
        h = self._ct.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", self._ct.c_uint(index), self._ct.byref(h))
        return h

    def compute_capability(self, handle: Any) -> tuple[int, int]:
        major, minor = self._ct.c_int(0), self._ct.c_int(0)
        self._call("nvmlDeviceGetCudaComputeCapability", handle, self._ct.byref(major), self._ct.byref(minor))
        return int(major.value), int(minor.value)

    def _string(self, call: str, handle: Any) -> str:
        buf = self._ct.create_string_buffer(96)
        self._call(call, handle, buf, self._ct.c_uint(96))
        return buf.value.decode("ascii", "replace")

    def uuid(self, handle: Any) -> str:
        return self._string("nvmlDeviceGetUUID", handle)

    def name(self, handle: Any) -> str:
        return self._string("nvmlDeviceGetName", handle)

    def mig_uuids(self, handle: Any) -> list[str]:
        current, pending = self._ct.c_uint(0), self._ct.c_uint(0)
        try:
            self._call("nvmlDeviceGetMigMode", handle, self._ct.byref(current), self._ct.byref(pending))
        except NvmlError:
            return []  # NotSupported on GPUs without MIG
        if current.value != 1:
            return []
        count = self._ct.c_uint(0)
        self._call("nvmlDeviceGetMaxMigDeviceCount", handle, self._ct.byref(count))
        out = []
        for i in range(count.value):
            mig = self._ct.c_void_p()
            try:
                self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, self._ct.c_uint(i), self._ct.byref(mig))
            except NvmlError:
                continue  # empty MIG slot
            out.append(self.uuid(mig))
        return out


def _libcuda_present() -> bool:
    """Whether the CUDA driver library can be loaded (without initialising CUDA)."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def query_nvml(nvml_factory: Callable[[], Any] = CtypesNvml,
               libcuda_present: Callable[[], bool] = _libcuda_present) -> GPUs:
    """Ask NVML for every device.  Any NVML failure means "no usable GPU", with the reason kept."""
    try:
        nvml = nvml_factory()
        nvml.init()
    except NvmlError as exc:
        return no_gpus(f"NVML unavailable: {exc}", "nvml")
    try:
        driver = nvml.driver_version()
        cuda = nvml.cuda_driver_version()
        devices = []
        for i in range(nvml.device_count()):
            h = nvml.handle(i)
            devices.append(GPU(index=i, name=nvml.name(h), uuid=nvml.uuid(h),
                               compute_capability=tuple(nvml.compute_capability(h)),
                               mig_uuids=tuple(nvml.mig_uuids(h))))
    except NvmlError as exc:
        return no_gpus(f"NVML query failed: {exc}", "nvml")
    finally:
        try:
            nvml.shutdown()
        except NvmlError:
            pass
    libcuda = libcuda_present()
    cuda_version = (cuda // 1000, (cuda % 1000) // 10) if cuda > 0 else None
    reason = None
    if not devices:
        reason = "NVML reports no NVIDIA GPU"
    elif not libcuda:
        reason = ("the CUDA driver library libcuda.so.1 is missing (a container started without the 'compute' "
                  "driver capability?)")
    elif cuda_version is None:
        reason = "the driver reports no CUDA version"
    return GPUs(devices=tuple(devices), driver_version=driver, cuda_driver_version=cuda_version, libcuda=libcuda,
                source="nvml", reason=reason)


def query_with_timeout(query: Callable[[], GPUs], timeout: float = NVML_TIMEOUT_S) -> GPUs:
    """Run ``query`` in a daemon thread; a hung driver must not hang ``import``."""
    box: list[GPUs] = []
    done = _thread.allocate_lock()
    done.acquire()

    def worker() -> None:
        try:
            box.append(query())
        except BaseException as exc:  # noqa: BLE001 - any failure means "no usable GPU"
            box.append(no_gpus(f"GPU probe failed: {type(exc).__name__}: {exc}", "nvml"))
        finally:
            done.release()

    _thread.start_new_thread(worker, ())
    if not done.acquire(True, timeout):
        return no_gpus(f"NVML did not answer within {timeout:g} s; treating the GPU as unusable", "nvml")
    return box[0]


# ---------------------------------------------------------------- driver presence and cache key (raw)


def driver_present() -> tuple[bool, str]:
    """One cheap check for an installed NVIDIA driver, before anything is imported."""
    if sys.platform == "win32":
        root = os.environ.get("SystemRoot", r"C:\Windows")
        path = os.path.join(root, "System32", "nvml.dll")
    elif sys.platform == "linux":
        if os.path.exists("/proc/driver/nvidia/version"):
            return True, ""
        path = "/usr/lib/wsl/lib/libnvidia-ml.so.1"  # WSL2 has no /proc/driver/nvidia
    else:
        return False, f"no NVIDIA CUDA driver exists for {sys.platform}"
    if os.path.exists(path):
        return True, ""
    return False, "no NVIDIA driver is installed (/proc/driver/nvidia/version is missing)"


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
    base = env.get("XDG_CACHE_HOME") or (os.path.join(os.path.expanduser("~"), ".cache"))
    if not os.path.isabs(base):
        return None
    return os.path.join(base, "fatdispatch", f"gpu-v{CACHE_SCHEMA}.json")


def _secure(st: os.stat_result) -> bool:
    if sys.platform == "win32":
        return True
    return st.st_uid == os.getuid() and not (st.st_mode & 0o022)


def gpus_to_json(g: GPUs) -> dict[str, Any]:
    return {"devices": [{"index": d.index, "name": d.name, "uuid": d.uuid,
                         "compute_capability": list(d.compute_capability), "mig_uuids": list(d.mig_uuids)}
                        for d in g.devices],
            "driver_version": g.driver_version,
            "cuda_driver_version": list(g.cuda_driver_version) if g.cuda_driver_version else None,
            "libcuda": g.libcuda, "reason": g.reason}


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
        data = _jsonfile.loads(os.read(fd, 65536).decode("utf-8"))
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


def write_cache(path: str, key: Mapping[str, Any], gpus: GPUs) -> None:
    """Write atomically (temp file + rename) into a private directory; failures are ignored."""
    import json

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _secure(os.stat(directory)):
            return
        tmp = f"{path}.{os.getpid()}.{_thread.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"schema": CACHE_SCHEMA, "key": dict(key), "gpus": gpus_to_json(gpus)}, f)
        os.replace(tmp, path)
    except OSError:
        pass


def drop_cache(env: Mapping[str, str]) -> None:
    path = cache_path(env)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


# ---------------------------------------------------------------- the cached accessor

_lock = _thread.allocate_lock()
_cached: GPUs | None = None
probe_count = 0


def probe_gpus(env: Mapping[str, str] | None = None, use_cache: bool = True) -> GPUs:
    """This machine's NVIDIA GPUs, probed once per process and cached per user on disk."""
    global _cached, probe_count
    if _cached is not None:
        return _cached
    with _lock:
        if _cached is None:
            probe_count += 1
            _cached = _probe_uncached(os.environ if env is None else env, use_cache)
        return _cached


def _probe_uncached(env: Mapping[str, str], use_cache: bool) -> GPUs:
    present, why = driver_present()
    if not present:
        return no_gpus(why)
    key = cache_key()
    path = cache_path(env) if use_cache else None
    if path:
        hit = read_cache(path, key)
        if hit is not None:
            return hit
    result = query_with_timeout(query_nvml)
    if path and "did not answer" not in (result.reason or ""):
        write_cache(path, key, result)
    return result


def forget() -> None:
    """Drop the in-process answer (the next probe asks again)."""
    global _cached
    with _lock:
        _cached = None
