"""The NVML binding: the few calls the GPU probe needs, through :mod:`ctypes` (never ``pynvml``, whose import
alone costs ~30 ms; never ``cuInit``, which breaks CUDA in forked children).

Imported only where an NVIDIA driver is installed and neither the pick cache nor the GPU cache answered.
"""

import _thread
import os
import sys

from ._records import GPU, GPUs, no_gpus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

class NvmlError(Exception):
    """An NVML call failed; ``code`` is the ``nvmlReturn_t`` value."""

    NAMES = {1: "Uninitialized", 2: "InvalidArgument", 3: "NotSupported", 4: "NoPermission", 6: "NotFound",
             9: "DriverNotLoaded", 10: "Timeout", 12: "LibraryNotFound", 13: "FunctionNotFound", 15: "GpuIsLost",
             18: "LibRmVersionMismatch", 999: "Unknown"}

    def __init__(self, code: "int", call: "str") -> "None":
        self.code = code
        self.call = call
        super().__init__(f"{call} failed: NVML_ERROR_{self.NAMES.get(code, str(code))} ({code})")


class CtypesNvml:
    """The few NVML calls the probe needs, through ctypes (``libnvidia-ml.so.1``)."""

    def __init__(self) -> "None":
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

    def _call(self, name: "str", *args: "Any") -> "None":
        try:
            fn = getattr(self._lib, name)
        except AttributeError:
            raise NvmlError(13, name) from None
        rc = fn(*args)
        if rc != 0:
            raise NvmlError(int(rc), name)

    def init(self) -> "None":
        self._call("nvmlInit_v2")

    def shutdown(self) -> "None":
        self._call("nvmlShutdown")

    def driver_version(self) -> "str":
        buf = self._ct.create_string_buffer(96)
        self._call("nvmlSystemGetDriverVersion", buf, 96)
        return buf.value.decode("ascii", "replace")

    def cuda_driver_version(self) -> "int":
        v = self._ct.c_int(0)
        self._call("nvmlSystemGetCudaDriverVersion_v2", self._ct.byref(v))
        return int(v.value)

    def device_count(self) -> "int":
        n = self._ct.c_uint(0)
        self._call("nvmlDeviceGetCount_v2", self._ct.byref(n))
        return int(n.value)

    def handle(self, index: "int") -> "Any":
        h = self._ct.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", self._ct.c_uint(index), self._ct.byref(h))
        return h

    def compute_capability(self, handle: "Any") -> "tuple[int, int]":
        major, minor = self._ct.c_int(0), self._ct.c_int(0)
        self._call("nvmlDeviceGetCudaComputeCapability", handle, self._ct.byref(major), self._ct.byref(minor))
        return int(major.value), int(minor.value)

    def _string(self, call: "str", handle: "Any") -> "str":
        buf = self._ct.create_string_buffer(96)
        self._call(call, handle, buf, self._ct.c_uint(96))
        return buf.value.decode("ascii", "replace")

    def uuid(self, handle: "Any") -> "str":
        return self._string("nvmlDeviceGetUUID", handle)

    def name(self, handle: "Any") -> "str":
        return self._string("nvmlDeviceGetName", handle)

    def mig_uuids(self, handle: "Any") -> "list[str]":
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


def _libcuda_present() -> "bool":
    """Whether the CUDA driver library can be loaded (without initialising CUDA)."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def query_nvml(nvml_factory: "Callable[[], Any]" = CtypesNvml,
               libcuda_present: "Callable[[], bool]" = _libcuda_present) -> "GPUs":
    """Ask NVML for every device.  Any NVML failure means "no usable GPU", with the reason kept."""
    try:
        nvml = nvml_factory()
        nvml.init()
    except NvmlError as exc:
        return no_gpus(f"NVML unavailable: {exc}", "nvml")
    try:
        driver = nvml.driver_version()
        try:
            cuda = nvml.cuda_driver_version()
        except NvmlError as exc:  # fatdispatch (issue 12): v2 asks libcuda.so.1; missing, it is LibraryNotFound
            if exc.code != 12:
                raise
            cuda = 0  # and the libcuda check below says why CUDA is unusable
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
